"""Crop geometry and resampling for the random resized crop, as pure functions: per-sample
boxes from uniforms, the bilinear sampling grid, and tf's bicubic (Keys a = -0.5) resampling of
each box. `simclr.augment.ops.random_resized_crop` draws the uniforms and calls them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

CROP_ATTEMPTS = 10  # rejection-sampling tries of the resized crop, all drawn at once


def _crop_boxes(u: torch.Tensor, hw: tuple[int, int], out_hw: tuple[int, int],
                scale: Sequence[float], ratio: Sequence[float]) -> torch.Tensor:
    """Per-sample crop boxes from uniforms ``u`` (B x 2*CROP_ATTEMPTS+2).

    Area fraction ~ U(scale), log aspect (w/h) ~ U(log ratio) scaled by the output aspect (as the
    reference's ``crop_and_resize``); the first attempt that fits inside the image wins, else the
    torchvision fallback (whole image, or a centred crop when its aspect is outside ``ratio``).
    Boxes are continuous (sub-pixel), which bilinear resampling handles exactly.

    Returns:
        B x 4: x0, y0, w, h in pixels, with 0 <= x0, x0 + w <= W (same for y0, h).
    """
    (H, W), (oh, ow), n = hw, out_hw, CROP_ATTEMPTS
    r_lo, r_hi = ratio[0] * ow / oh, ratio[1] * ow / oh
    area = H * W * (scale[0] + (scale[1] - scale[0]) * u[:, :n])  # B x n
    log_lo = math.log(r_lo)
    aspect = torch.exp(log_lo + (math.log(r_hi) - log_lo) * u[:, n:2 * n])
    w, h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    ok = (w <= W) & (h <= H)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)  # first fitting attempt
    fw, fh = (W, W / r_lo) if W / H < r_lo else (H * r_hi, H) if W / H > r_hi else (W, H)
    found = ok.any(1)
    w = torch.where(found, w.gather(1, first).squeeze(1), fw)
    h = torch.where(found, h.gather(1, first).squeeze(1), fh)
    pos = torch.where(found[:, None], u[:, 2 * n:2 * n + 2], 0.5)  # fallback: centred
    return torch.stack([pos[:, 0] * (W - w), pos[:, 1] * (H - h), w, h], 1)


def _box_grid(boxes: torch.Tensor, hw: tuple[int, int], out_hw: tuple[int, int],
              flip: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` grid (B x oh x ow x 2) sampling each box at the output pixel centres.

    Boxes are axis-aligned, so the grid is separable: built from two B x side rulers instead of
    ``F.affine_grid``'s bmm (same values, ~5x cheaper on CPU). ``flip`` (B bool) mirrors x.
    """
    (H, W), (oh, ow) = hw, out_hw
    x0, y0, w, h = boxes.unbind(1)
    dev = boxes.device
    tx = (2 * torch.arange(ow, device=dev) + 1) / ow - 1  # output pixel centres in [-1, 1]
    ty = (2 * torch.arange(oh, device=dev) + 1) / oh - 1
    sx = torch.where(flip, -w, w) / W
    gx = (2 * x0 + w)[:, None] / W - 1 + sx[:, None] * tx  # B x ow
    gy = (2 * y0 + h)[:, None] / H - 1 + (h / H)[:, None] * ty  # B x oh
    B = boxes.shape[0]
    return torch.stack([gx[:, None, :].expand(B, oh, ow), gy[:, :, None].expand(B, oh, ow)], -1)


KEYS_A = -0.5  # Keys' cubic convolution parameter of tf.image.resize(BICUBIC); PyTorch: -0.75


def _keys_cubic(d: torch.Tensor, a: float = KEYS_A) -> torch.Tensor:
    """Keys (1981) cubic convolution kernel at distances ``d`` (any shape)."""
    d = d.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1  # |d| <= 1
    far = ((d - 5) * d + 8) * d * a - 4 * a  # 1 < |d| < 2
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _cubic_matrix(start: torch.Tensor, length: torch.Tensor, side: int, out: int,
                  flip: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample 1-D bicubic resampling matrices B x out x side for boxes [start, start+len).

    tf ``resize_bicubic`` semantics (half-pixel centres, Keys a = -0.5) on the cropped image:
    output pixel j samples ``start + (j + 0.5) * len / out - 0.5``; taps outside the box's
    pixels get weight 0 and the rest are renormalized to sum to 1, as tf does at the borders
    of the crop it resizes. tf reads the weights from a 1024-entry table; these are exact.
    """
    dev = start.device
    j = torch.arange(out, device=dev, dtype=torch.float32)
    src = start[:, None] + (j + 0.5) * (length / out)[:, None] - 0.5  # B x out
    lo = torch.ceil(start - 0.5).clamp(0, side - 1)  # first / last pixel centre in the box
    hi = torch.maximum(torch.floor(start + length - 0.5).clamp(0, side - 1), lo)
    base = torch.floor(src)
    taps = base[..., None] + torch.arange(-1, 3, device=dev)  # B x out x 4
    weight = _keys_cubic(src[..., None] - taps)
    weight = weight * ((taps >= lo[:, None, None]) & (taps <= hi[:, None, None]))
    weight = weight / weight.sum(-1, keepdim=True)
    if flip is not None:  # mirror the output: column j takes column out - 1 - j's taps
        taps = torch.where(flip[:, None, None], taps.flip(1), taps)
        weight = torch.where(flip[:, None, None], weight.flip(1), weight)
    m = torch.zeros(start.shape[0], out, side, device=dev)
    return m.scatter_add_(2, taps.clamp(0, side - 1).long(), weight)


def _bicubic_boxes(x: torch.Tensor, boxes: torch.Tensor, out: tuple[int, int],
                   flip: torch.Tensor) -> torch.Tensor:
    """Each sample's box resized to ``out`` bicubically (separable: two batched matmuls),
    clamped to [0, 1] (cubic overshoots)."""
    _, _, H, W = x.shape
    x0, y0, w, h = boxes.unbind(1)
    rows = _cubic_matrix(y0, h, H, out[0])  # B x oh x H
    cols = _cubic_matrix(x0, w, W, out[1], flip)  # B x ow x W
    y = torch.matmul(rows[:, None], x)  # B x C x oh x W
    return torch.matmul(y, cols[:, None].transpose(-1, -2)).clamp_(0, 1)  # B x C x oh x ow
