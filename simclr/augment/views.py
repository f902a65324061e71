"""Views of several sizes (multi-crop): the groups of ``augment.views`` resolved for the data and
made batched on the device, one :func:`~simclr.augment.ops.simclr_augment` call per group."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from simclr.augment.ops import Stats, simclr_augment

if TYPE_CHECKING:
    from simclr.config import Augment


def view_groups(cfg: Augment, hw: tuple[int, int]) -> list[tuple[int, tuple[int, int],
                                                                   tuple[float, float]]]:
    """``cfg.views`` resolved for H x W images: (count, (out_h, out_w), crop scale) per group.

    A size <= 1 is a fraction of the image side (1 = the images' own H x W), > 1 pixels; a
    group without its own crop scale takes ``cfg.crop_scale``.
    """
    out = []
    for group in cfg.views:
        count, size = int(group[0]), group[1]
        if size == 1:
            side = hw
        elif size < 1:
            side = (max(1, round(size * hw[0])), max(1, round(size * hw[1])))
        else:
            side = (int(size), int(size))
        scale = (float(group[2]), float(group[3])) if len(group) == 4 else tuple(cfg.crop_scale)
        out.append((count, side, scale))
    return out


def make_views(x: torch.Tensor, cfg: Augment, mean: Stats, std: Stats,
               generator: torch.Generator) -> list[torch.Tensor]:
    """Every view of each image the groups of ``cfg.views`` ask for, batched on x's device.

    Each group is one :func:`simclr_augment` call on the batch repeated ``count`` times (its
    own size and crop scale), in the order of ``cfg.views``, all drawing from ``generator``.
    Groups of one size are then joined, so the encoder runs once per size. The default
    ``[[2, 1]]`` is exactly :func:`two_views` (the same call, the same draws).

    Args:
        x: B x C x H x W uint8 (or float in [0, 1]).

    Returns:
        One tensor per distinct output size, in order of first appearance, each
        (views of that size x B) x C x h x w float32 normalized, view-major: rows
        k*B .. (k+1)*B - 1 are one view of every image.
    """
    by_size: dict[tuple[int, int], list[torch.Tensor]] = {}
    for count, side, scale in view_groups(cfg, (x.shape[2], x.shape[3])):
        group_cfg = cfg if scale == tuple(cfg.crop_scale) else replace(cfg, crop_scale=scale)
        by_size.setdefault(side, []).append(
            simclr_augment(x.repeat(count, 1, 1, 1), group_cfg, mean, std, generator, side))
    return [parts[0] if len(parts) == 1 else torch.cat(parts) for parts in by_size.values()]


__all__ = ["make_views", "view_groups"]
