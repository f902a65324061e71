"""An exponential moving average of the encoder's weights (``train.ema``: its decay), the
encoder a run exports, evaluates and monitors. It changes nothing the optimizer sees, so a
reference-exact preset stays exact.

The average is that of timm's ``ModelEmaV3(model, decay, exclude_buffers=False)`` updated
without a step count: after every optimizer step each floating-point entry of the encoder's
state (weights and the BatchNorm running statistics alike) moves ``1 - decay`` of the way to
the trained encoder's, and integer buffers (BatchNorm's ``num_batches_tracked``) are copied. It
starts as a copy of the initial encoder.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def weight_average(encoder: nn.Module) -> nn.Module:
    """The average's module: a copy of ``encoder`` that trains nothing itself."""
    average = copy.deepcopy(encoder).eval()
    for p in average.parameters():
        p.requires_grad_(False)
    return average


@torch.no_grad()
def update_average(average: nn.Module, encoder: nn.Module, decay: float) -> None:
    """``average <- decay x average + (1 - decay) x encoder`` for every floating-point state
    entry (parameters and buffers), a copy for the others; in place."""
    for a, m in zip(average.state_dict().values(), encoder.state_dict().values(), strict=True):
        if a.is_floating_point():
            a.lerp_(m, 1.0 - decay)
        else:
            a.copy_(m)


__all__ = ["update_average", "weight_average"]
