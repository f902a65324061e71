"""Optimizers (LARS with the tf reference's semantics, SGD, Adam, AdamW) and the lr schedule."""

from __future__ import annotations

import math
from typing import get_args

import torch
from torch import nn

from simclr.config.schema import StepRule


def scaled_lr(base_lr: float, batch_size: int, scaling: str) -> float:
    """The peak lr for a global batch B: ``base_lr x B/256`` (linear), ``base_lr x sqrt(B)``
    (sqrt, the tf reference's rule: the paper's 0.075 x sqrt(4096) = 4.8) or ``base_lr``."""
    if scaling == "linear":
        return base_lr * batch_size / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size)
    return base_lr


# How a run's length and warmup are counted from (N images, global batch B, epochs E, warmup W).
STEP_RULES = get_args(StepRule)


def step_counts(n: int, batch_size: int, epochs: int, warmup_epochs: float,
                rule: str = "epochs") -> tuple[int, int]:
    """``(total_steps, warmup_steps)`` of a run.

    epochs: E whole epochs of N // B batches (the last partial batch dropped) and
        ``round(W x (N // B))`` warmup steps.
    reference: google-research/simclr's count over an endless stream of batches:
        ``N x E // B + 1`` steps and ``round(W x N // B)`` warmup steps
        (``get_train_steps`` / ``WarmUpAndCosineDecay`` in tf2 ``model.py``).
    """
    if rule == "reference":
        return n * epochs // batch_size + 1, int(round(warmup_epochs * n // batch_size))
    per_epoch = n // batch_size
    return epochs * per_epoch, round(warmup_epochs * per_epoch)


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then cosine decay to 0.

    As in the tf reference: ``lr(0) = 0`` when there is warmup, ``lr(warmup_steps) = peak_lr``
    and ``lr(total_steps) = 0``.
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (ndim > 1) get weight decay and LARS adaptation; biases and norm
    parameters (ndim == 1) get neither, as in the reference's exclusion of batch_normalization
    and bias variables."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else plain).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_adapt": True},
        {"params": plain, "weight_decay": 0.0, "lars_adapt": False},
    ]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling with the semantics of the tf reference
    (google-research/simclr ``lars_optimizer.py``).

    Per parameter w with gradient g in a group with weight decay wd:
        g <- g + wd * w                                   (decay first)
        trust = eta * ||w|| / ||g||  if both norms > 0 else 1   (only if the group adapts)
        v <- momentum * v + lr * trust * g                 (the lr lives inside the momentum)
        w <- w - v              (nesterov: w <- w - (momentum * v + lr * trust * g))
    With a constant lr and no adaptation this equals ``torch.optim.SGD`` with momentum.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, nesterov: bool = False):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        nesterov=nesterov, lars_adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                lr = group["lr"]
                if group["lars_adapt"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    step_g = g * (trust * lr)
                else:
                    step_g = g * lr
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                v = state["momentum_buffer"]
                v.mul_(group["momentum"]).add_(step_g)
                if group["nesterov"]:
                    p.sub_(v * group["momentum"] + step_g)
                else:
                    p.sub_(v)
        return loss


def _lars(groups, o):
    return LARS(groups, lr=0.0, momentum=o.momentum, eta=o.eta, nesterov=o.nesterov)


def _sgd(groups, o):
    return torch.optim.SGD(groups, lr=0.0, momentum=o.momentum, nesterov=o.nesterov)


def _adam(groups, o):
    return torch.optim.Adam(groups, lr=0.0)


def _adamw(groups, o):
    return torch.optim.AdamW(groups, lr=0.0)


# name -> builder(param_groups, optim_cfg); the lr is set every step from lr_at().
OPTIMIZERS = {"lars": _lars, "sgd": _sgd, "adam": _adam, "adamw": _adamw}


def build_optimizer(model: nn.Module, optim_cfg) -> torch.optim.Optimizer:
    """Optimizer named by ``optim_cfg.name`` over ``param_groups(model, weight_decay)``."""
    groups = param_groups(model, optim_cfg.weight_decay)
    if optim_cfg.name != "lars":
        for g in groups:
            g.pop("lars_adapt")
    return OPTIMIZERS[optim_cfg.name](groups, optim_cfg)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
