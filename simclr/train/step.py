"""``train_step``: one SimCLR optimization step on a batch's views (the public step the
training loop, ``simclr bench`` and the tests share)."""

from __future__ import annotations

import torch

from simclr import config as C
from simclr.runtime.compute import autocast
from simclr.train.loss import multi_nt_xent, nt_xent


def train_step(model, optimizer, scaler, views: torch.Tensor | list[torch.Tensor],
               cfg: C.Config, device: torch.device, precision: str, rank: int = 0,
               gather=None, labels: torch.Tensor | None = None) -> torch.Tensor:
    """One SimCLR step on the V views of B images; returns the loss.

    ``views`` is one tensor of V x B views, view-major (rows k*B .. (k+1)*B - 1: view k of
    each image; V = 2: first half view 1), or a list of such tensors, one per view size
    (:func:`~simclr.augment.views.make_views`); V is the number of views ``augment.views`` makes.
    The encoder runs once per size (BatchNorm statistics per size group), the head once.

    The returned (logged) loss is the per-view mean NT-Xent: two views and no labels
    :func:`nt_xent`, ln(2N - 1) at random init; otherwise :func:`multi_nt_xent` (every other
    view of the image, or with ``labels`` of its class, a positive), equal to it for V = 2.
    The optimizer minimizes ``loss.scale`` times it (2 = the tf reference's ``mean(loss_a +
    loss_b)``, which under LARS halves the relative weight decay and doubles the BN/bias step).
    Under DDP ``gather`` is ``dist.gather_with_grad``: the loss uses every rank's negatives.
    """
    with autocast(device, precision):
        _, z = model(views)  # VB x proj_dim
    n_views = sum(int(group[0]) for group in cfg.augment.views)
    if n_views == 2 and labels is None:
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, cfg.loss.temperature, rank=rank, gather=gather)
    else:
        loss = multi_nt_xent(z, n_views, cfg.loss.temperature, rank, gather, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss * cfg.loss.scale).backward()  # x 1.0 is exact: the same gradients
    if cfg.optim.clip_grad_norm > 0:
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()

