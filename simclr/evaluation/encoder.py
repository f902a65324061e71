"""A run's encoder as a module for downstream use: `load_encoder` rebuilds it from an
exported ``encoder.safetensors`` (through the one encoder factory) as a
`NormalizedEncoder`, which applies the run's normalization itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from simclr.augment.ops import normalize
from simclr.errors import SimCLRError
from simclr.models.factory import build_encoder, encoder_dim
from simclr.train.rundir import encoder_file, load_model_state, read_encoder


class NormalizedEncoder(nn.Module):
    """Float images in [0, 1] (N x C x H x W) -> features h; applies the run's normalization
    itself, so downstream users need no constants. ``meta`` holds what the run recorded.

    ``feature_dim``: D; default the run's record, else our ResNet's, else one forward pass
    at the recorded image size."""

    def __init__(self, encoder: nn.Module, mean, std, meta: dict[str, Any] | None = None,
                 feature_dim: int | None = None):
        super().__init__()
        self.encoder = encoder
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.meta = dict(meta or {})
        self.feature_dim = (feature_dim or self.meta.get("feature_dim")
                            or encoder_dim(encoder, c, self.meta["image_size"]))

    def forward(self, x: Tensor) -> Tensor:
        """Float images in [0, 1], or uint8 images (0-255, divided by 255), N x C x H x W."""
        if x.dtype == torch.uint8:
            x = x.float() / 255
        elif not x.is_floating_point():
            raise SimCLRError(f"the encoder takes float images in [0, 1] or uint8 images, got "
                              f"{x.dtype}; convert with x.float() / 255")
        return self.encoder(normalize(x, self.mean, self.std))  # N x D


def load_encoder(run_dir_or_file: str | Path,
                 encoder: nn.Module | None = None) -> NormalizedEncoder:
    """The encoder of a run dir (or an ``encoder.safetensors``) as a `NormalizedEncoder`
    in eval mode.

    Our ResNets and timm / torchvision encoders (with that package installed) are rebuilt
    from the file's record. A custom module (a run of ``pretrain(cfg, encoder=module)``)
    cannot be: pass ``encoder``, a module of the same kind, and the weights are loaded into it.
    """
    path = encoder_file(run_dir_or_file)
    tensors, meta = read_encoder(path)
    encoder = encoder if encoder is not None else build_encoder(meta)
    load_model_state(encoder, tensors, path)
    return NormalizedEncoder(encoder, meta["mean"], meta["std"], meta).eval()


def random_encoder_like(enc: NormalizedEncoder, seed: int,
                        module: nn.Module | None = None) -> NormalizedEncoder:
    """The same architecture, randomly initialized from ``seed``: the what-did-pretraining-add
    baseline. ``module``: an untrained module to use instead (a custom encoder, which cannot
    be rebuilt from its record, is its own fresh module)."""
    torch.manual_seed(seed)
    m = enc.meta
    encoder = module if module is not None else build_encoder(m)
    return NormalizedEncoder(encoder, m["mean"], m["std"], {**m, "epoch": 0},
                             enc.feature_dim).eval()


__all__ = ["NormalizedEncoder", "load_encoder", "random_encoder_like"]
