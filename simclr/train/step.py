"""``train_step``: one SimCLR optimization step on a batch's views (the public step the
training loop, ``simclr bench`` and the tests share), and the optimizer step it ends with
(fine-tuning's step too)."""

from __future__ import annotations

import torch

from simclr import config as C
from simclr.runtime.compute import autocast
from simclr.train.loss import contrastive_loss


def optimizer_step(loss: torch.Tensor, optimizer, scaler, scale: float = 1.0,
                   clip_grad_norm: float = 0.0) -> None:
    """Backward of ``scale x loss`` and an optimizer step: through the GradScaler (fp16: small
    gradients do not flush to zero, a step whose gradients overflowed is skipped and the scale
    halves; a disabled scaler is a plain step), gradients clipped to ``clip_grad_norm`` (0: no
    clipping) on their true scale. ``x 1.0`` is exact: the same gradients."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss * scale).backward()
    if clip_grad_norm > 0:
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()


def train_step(model, optimizer, scaler, views: torch.Tensor | list[torch.Tensor],
               cfg: C.Config, device: torch.device, precision: str, rank: int = 0,
               gather=None, labels: torch.Tensor | None = None) -> torch.Tensor:
    """One SimCLR step on the V views of B images; returns the loss.

    ``views`` is one tensor of V x B views, view-major (rows k*B .. (k+1)*B - 1: view k of
    each image; V = 2: first half view 1), or a list of such tensors, one per view size
    (`make_views`); V is the number of views ``augment.views`` makes.
    The encoder runs once per size (BatchNorm statistics per size group), the head once.

    The returned (logged) loss is the per-view mean NT-Xent
    (`contrastive_loss`: every other view of the image, or with
    ``labels`` of its class, a positive), ln(V·N - 1) at random init.
    The optimizer minimizes ``loss.scale`` times it (2 = the tf reference's ``mean(loss_a +
    loss_b)``, which under LARS halves the relative weight decay and doubles the BN/bias step).
    Under DDP ``gather`` is ``dist.gather_with_grad``: the loss uses every rank's negatives.
    """
    with autocast(device, precision):
        _, z = model(views)  # VB x proj_dim
    n_views = sum(int(group[0]) for group in cfg.augment.views)
    loss = contrastive_loss(z, n_views, cfg.loss.temperature, rank, gather, labels,
                            cfg.loss.name, cfg.loss.dclw_sigma)
    optimizer_step(loss, optimizer, scaler, cfg.loss.scale, cfg.optim.clip_grad_norm)
    return loss.detach()

