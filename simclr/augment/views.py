"""Views of several sizes (multi-crop): the groups of ``augment.views`` resolved for the data and
made batched on the device, one `simclr_augment` call per group; and
the view-size schedule (small views early, full-size late: `size_scale`)."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction
from typing import TYPE_CHECKING

import torch

from simclr.augment.ops import Stats, simclr_augment

if TYPE_CHECKING:
    from simclr.config import Augment


def size_scale(cfg: Augment, step: int, total_steps: int) -> float:
    """The views' size at ``step`` of a run of ``total_steps``, as a fraction of their size in
    ``cfg.views``: 1 without a schedule (``size_start`` 1). Otherwise ``size_start`` until the
    ramp (``size_ramp``: fractions of the run) starts, then growing linearly to 1 at its end,
    in ``size_stages`` equal stages when set (``size_start`` for the first, 1 for the last); a
    view's side is this x its size, rounded to whole pixels. A pure function of the step, so a
    resumed run makes the views an uninterrupted one makes. The progress is exact (fractions,
    the ramp as written), so a stage starts at the first step at or past its boundary."""
    if cfg.size_start >= 1:
        return 1.0
    lo, hi = (Fraction(repr(float(x))) for x in cfg.size_ramp)  # 0.2 is 1/5, not 0.2000...1
    progress = min(Fraction(1), max(Fraction(0), (Fraction(step, max(1, total_steps)) - lo)
                                    / (hi - lo)))
    if cfg.size_stages:
        progress = min(Fraction(1), math.floor(progress * cfg.size_stages)
                       / Fraction(cfg.size_stages - 1))
    return cfg.size_start + (1.0 - cfg.size_start) * float(progress)


def view_groups(cfg: Augment, hw: tuple[int, int], scale: float = 1.0
                ) -> list[tuple[int, tuple[int, int], tuple[float, float]]]:
    """``cfg.views`` resolved for H x W images: (count, (out_h, out_w), crop scale) per group.

    A size <= 1 is a fraction of the image side (1 = the images' own H x W), > 1 pixels; a
    group without its own crop scale takes ``cfg.crop_scale``. ``scale`` (of
    `size_scale`) multiplies every side, rounded to whole pixels (at least 1).
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
        if scale != 1.0:
            side = (max(1, round(side[0] * scale)), max(1, round(side[1] * scale)))
        crop = (float(group[2]), float(group[3])) if len(group) == 4 else tuple(cfg.crop_scale)
        out.append((count, side, crop))
    return out


def make_views(x: torch.Tensor, cfg: Augment, mean: Stats, std: Stats,
               generator: torch.Generator, scale: float = 1.0) -> list[torch.Tensor]:
    """Every view of each image the groups of ``cfg.views`` ask for, batched on x's device.

    Each group is one `simclr_augment` call on the batch repeated ``count`` times (its
    own size and crop scale), in the order of ``cfg.views``, all drawing from ``generator``.
    Groups of one size are then joined, so the encoder runs once per size. The default
    ``[[2, 1]]`` is exactly `two_views` (the same call, the same draws).

    Args:
        x: B x C x H x W uint8 (or float in [0, 1]).
        scale: every view's side x this (`size_scale`).

    Returns:
        One tensor per distinct output size, in order of first appearance, each
        (views of that size x B) x C x h x w float32 normalized, view-major: rows
        k*B .. (k+1)*B - 1 are one view of every image.
    """
    by_size: dict[tuple[int, int], list[torch.Tensor]] = {}
    for count, side, crop in view_groups(cfg, (x.shape[2], x.shape[3]), scale):
        group_cfg = cfg if crop == tuple(cfg.crop_scale) else replace(cfg, crop_scale=crop)
        by_size.setdefault(side, []).append(
            simclr_augment(x.repeat(count, 1, 1, 1), group_cfg, mean, std, generator, side))
    return [parts[0] if len(parts) == 1 else torch.cat(parts) for parts in by_size.values()]


__all__ = ["make_views", "size_scale", "view_groups"]
