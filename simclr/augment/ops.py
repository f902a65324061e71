"""Batched SimCLR augmentations with per-sample random parameters, on the input's device.

Every op takes a B x C x H x W batch in [0, 1] (C = 1 or 3; uint8 is scaled by 1/255), works in
float32 with autocast off, draws all its random numbers with an explicit ``torch.Generator``
(same generator state -> same output, so views are a pure function of the generator's seed),
and applies itself to each sample with probability ``p`` (p=0: exactly the identity, p=1:
always). No Python loop runs over samples.

Draws are made on the generator's device and moved to the images' device. Training uses CPU
generators whatever its device, so the draws of a step are the same on any device (a run may
resume on another one), and which samples a jitter round's hue or the blur touches is known on
the host: those ops then compute only the selected samples, without a GPU sync.

The recipe follows google-research/simclr (tf2 ``data_util.py``); where it deviates, the
docstring says so and why.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from simclr.augment.crop import CROP_ATTEMPTS, _bicubic_boxes, _box_grid, _crop_boxes
from simclr.config import Augment
from simclr.runtime.compute import to_device

# ITU-R 601 luma weights; tf.image.rgb_to_grayscale (the reference) uses 0.2989 for red, which
# differs by at most 0.0001 (0.03 of one 8-bit level).
LUMA = (0.299, 0.587, 0.114)

Stats = Sequence[float] | torch.Tensor


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1]; any float -> float32 (same shape)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)


def _fp32(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Call ``fn(x, ...)`` on ``to_float(x)`` with autocast off for x's device."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args, **kwargs):
        with torch.autocast(x.device.type, enabled=False):
            return fn(to_float(x), *args, **kwargs)

    return wrapper


@functools.lru_cache(maxsize=64)
def _const(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A small float32 constant, copied to ``device`` once (an H2D copy syncs a GPU stream)."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def _draw(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """Uniforms in [0, 1) on the generator's own device."""
    return torch.rand(*shape, generator=generator, device=generator.device)


def _rand(x: torch.Tensor, generator: torch.Generator, *shape: int) -> torch.Tensor:
    """Uniforms drawn by ``generator`` (on its device), on x's device."""
    return to_device(_draw(generator, *shape), x.device)


def _mask(m: torch.Tensor) -> torch.Tensor:
    return m.view(-1, 1, 1, 1)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ---------------------------------------------------------------- geometry


@_fp32
def random_resized_crop(x: torch.Tensor, size: int | tuple[int, int], scale: Sequence[float],
                        ratio: Sequence[float], generator: torch.Generator,
                        flip_p: float = 0.0, interpolation: str = "bilinear") -> torch.Tensor:
    """Random resized crop (+ optional fused horizontal flip), one batched resampling.

    Args:
        x: B x C x H x W in [0, 1].
        size: output side, or (height, width).
        scale: (lo, hi) range of the crop's area as a fraction of the image.
        ratio: (lo, hi) range of the crop's aspect (width / height).
        flip_p: per-sample probability of mirroring the crop (free: folded into the sampling
            grid; equals ``random_flip`` after the crop up to float rounding).
        interpolation: "bilinear" (one grid_sample, align_corners=False, border clamp at the
            box edges; keeps values in [0, 1]) or "bicubic" (the tf reference's
            ``crop_and_resize``: Keys a = -0.5 on the crop, see ``_cubic_matrix``).

    Returns:
        B x C x size_h x size_w.
    """
    B, C, H, W = x.shape
    out = _pair(size)
    u = _rand(x, generator, B, 2 * CROP_ATTEMPTS + 3)
    boxes = _crop_boxes(u[:, :-1], (H, W), out, scale, ratio)
    flip = u[:, -1] < flip_p
    if interpolation == "bicubic":
        return _bicubic_boxes(x, boxes, out, flip)
    grid = _box_grid(boxes, (H, W), out, flip)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@_fp32
def random_flip(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flip of each sample with probability p (B x C x H x W -> same)."""
    if p <= 0:
        return x
    flip = _rand(x, generator, x.shape[0]) < p
    return torch.where(_mask(flip), x.flip(-1), x)


# ---------------------------------------------------------------- colour


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma: B x 3 x H x W -> B x 1 x H x W (1-channel input is returned as is)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


_SEXTANT = (3.0, 2.0, 4.0)  # channel n = clamp(sign_n * |h6 - centre_n| + off_n, 0, 1) ...
_SIGN, _OFF = (1.0, -1.0, -1.0), (-1.0, 2.0, 2.0)  # ... at full chroma, for hue h6 in [0, 6]


def _hmc(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB B x 3 x H x W -> hue in sextants [-1, 5], min, chroma (max - min); each B x 1 x H x W."""
    v, low = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    c = v - low
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    safe = torch.where(c > 0, c, 1.0)  # c = 0 -> all differences are 0 -> hue 0
    h6 = torch.where(r == v, (g - b) / safe,
                     torch.where(g == v, (b - r) / safe + 2, (r - g) / safe + 4))
    return h6, low, c


def _from_hmc(h6: torch.Tensor, low: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_hmc`` for any real hue (in sextants, taken mod 6) -> B x 3 x H x W."""
    h6 = torch.remainder(h6, 6.0)
    centre, sign, off = (_const(v, h6.device).view(1, 3, 1, 1) for v in (_SEXTANT, _SIGN, _OFF))
    ramp = (h6 - centre).abs_().mul_(sign).add_(off).clamp_(0, 1)  # hue at full chroma
    return torch.addcmul(low, c, ramp)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W RGB in [0, 1] -> HSV, all channels in [0, 1] (hue in turns)."""
    h6, low, c = _hmc(x)
    v = low + c
    s = c / torch.where(v > 0, v, 1.0)  # exact down to the smallest floats; black -> 0
    return torch.cat([torch.remainder(h6 / 6, 1.0), s, v], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W HSV (hue in turns) -> RGB in [0, 1]."""
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _from_hmc(6 * h, v - v * s, v * s)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by per-sample ``shift`` (B, in turns) like ``tf.image.adjust_hue``; exact HSV."""
    h6, low, c = _hmc(x)
    return _from_hmc(h6 + 6 * shift.view(-1, 1, 1, 1), low, c)


def _on_samples(fn: Callable[..., torch.Tensor], x: torch.Tensor, sel: torch.Tensor,
                *params: torch.Tensor, by_index: bool | None = None,
                inplace: bool = False) -> torch.Tensor:
    """x with ``fn(x, *params)`` applied to the samples where ``sel`` (B bool), others unchanged.

    ``fn`` maps a sub-batch and its per-sample ``params`` (leading dim B) to the sub-batch's
    shape; ``sel`` and ``params`` may live on another device than x (the generator's). By index
    (default where ``sel`` is on the CPU, so finding the samples needs no GPU sync) only the
    selected samples are computed, written into x itself if ``inplace``; otherwise (``sel`` on a
    GPU) all are and a mask picks. Both give the same values.
    """
    if sel.device.type == "cpu" if by_index is None else by_index:
        idx = sel.nonzero().squeeze(1)
        if not idx.numel():
            return x
        params = [to_device(p[idx], x.device) for p in params]
        idx = to_device(idx, x.device)
        out = fn(x[idx], *params)
        return x.index_copy_(0, idx, out) if inplace else x.index_copy(0, idx, out)
    params = [to_device(p, x.device) for p in params]
    return torch.where(_mask(to_device(sel, x.device)), fn(x, *params), x)


def _jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
            by_index: bool | None = None) -> torch.Tensor:
    """Apply brightness, contrast, saturation, hue in per-sample order, clipping after each.

    Brightness, contrast and saturation are each ``a*x + b*channel_mean + g*gray`` for per-sample
    (a, b, g), so one batched matmul per round serves every sample whatever its op; samples whose
    op this round is hue pass through it as (1, 0, 0) and get the hue rotation instead.

    Args:
        x: B x C x H x W in [0, 1].
        factors: B x 4: brightness, contrast, saturation factors and hue shift (turns);
            (1, 1, 1, 0) is the exact identity.
        order: B x 4 long: op index (0 bright, 1 contrast, 2 saturation, 3 hue) at each round.
            ``factors`` and ``order`` may live on another device than x (see the module doc).
        by_index: see ``_on_samples``.
    """
    f = factors.gather(1, order)  # B x 4: factor of each round's op
    a = torch.where(order < 3, f, 1.0)
    b = torch.where(order == 1, 1 - f, 0.0)  # contrast: (x - mean) * f + mean
    g = torch.where(order == 2, 1 - f, 0.0)  # saturation: (x - gray) * f + gray
    shift = torch.where(order == 3, f, 0.0)  # stays on the draws' device: it selects samples
    a, b, g = to_device(torch.stack([a, b, g]), x.device)  # one copy for the three
    B, C = x.shape[:2]
    luma = _const(LUMA if C == 3 else (0.0,), x.device)
    eye = torch.eye(C, device=x.device)
    bufs = (torch.empty_like(x), torch.empty_like(x))  # ping-pong; the input is never written
    for r in range(4):
        # per-sample C x C colour matrix a*I + g*(1 luma^T) and bias b*mean: one baddbmm
        m = a[:, r, None, None] * eye + g[:, r, None, None] * luma
        bias = b[:, r, None, None] * x.mean((2, 3)).unsqueeze(2)  # B x C x 1
        torch.baddbmm(bias, m, x.flatten(2), out=bufs[r % 2].flatten(2))
        x = bufs[r % 2].clamp_(0, 1)
        if C == 3:
            x = _on_samples(adjust_hue, x, shift[:, r] != 0, shift[:, r], by_index=by_index,
                            inplace=True)
    return x


@_fp32
def color_jitter(x: torch.Tensor, strength: float, p: float, generator: torch.Generator, *,
                 brightness: float | None = None, contrast: float | None = None,
                 saturation: float | None = None, hue: float | None = None) -> torch.Tensor:
    """SimCLR colour jitter (reference ``color_jitter_rand``, simclrv2 brightness), per sample.

    Factors: brightness U(max(0, 1-b), 1+b) multiplies; contrast U(max(0, 1-c), 1+c) scales
    around the per-channel spatial mean (``tf.image.adjust_contrast``); saturation
    U(max(0, 1-s), 1+s) blends with the luma image (torchvision's ``adjust_saturation``; the
    reference scales HSV saturation instead, a close but not identical op); hue shift U(-h, h)
    turns rotates the exact HSV hue. Order is a random permutation per sample; clip to [0, 1]
    after each op; the whole jitter happens with probability p. 1-channel images get only
    brightness and contrast.

    Args:
        x: B x C x H x W in [0, 1].
        strength: s; b = c = s_ = 0.8 s and h = 0.2 s unless given explicitly.
        p: per-sample probability of jittering.
        brightness, contrast, saturation, hue: override one magnitude (0 switches the op off).

    Returns:
        B x C x H x W in [0, 1].
    """
    if p <= 0:
        return x
    mags = [0.8 * strength if m is None else m for m in (brightness, contrast, saturation)]
    h = 0.2 * strength if hue is None else hue
    B = x.shape[0]
    u = _draw(generator, B, 9)  # parameters stay on the generator's device (module doc)
    order = u[:, 1:5].argsort(1)  # per-sample random permutation of the 4 ops
    lo = _const(tuple(max(0.0, 1 - m) for m in mags) + (-h,), u.device)
    hi = _const(tuple(1 + m for m in mags) + (h,), u.device)
    factors = lo + (hi - lo) * u[:, 5:9]
    if x.shape[1] != 3:  # saturation and hue are no-ops on 1 channel
        factors = factors * _const((1.0, 1.0, 0.0, 0.0), u.device) + _const((0, 0, 1, 0), u.device)
    identity = _const((1.0, 1.0, 1.0, 0.0), u.device)
    return _jitter(x, torch.where((u[:, 0] >= p)[:, None], identity, factors), order)


@_fp32
def random_grayscale(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each RGB sample by its luma (3 equal channels) with probability p; 1-ch: no-op."""
    if p <= 0 or x.shape[1] == 1:
        return x
    gray = _rand(x, generator, x.shape[0]) < p
    return torch.where(_mask(gray), grayscale(x).expand_as(x), x)


def _blur(x: torch.Tensor, k: torch.Tensor, channels_last: bool | None = None) -> torch.Tensor:
    """Separable blur of B x C x H x W by per-sample 1-D kernels k (B x K), reflect padding.

    The grouped conv runs channels_last on CPUs (~1.7x faster there) and NCHW elsewhere (cuDNN
    may take a slow path for B*C groups in channels_last); ``channels_last`` forces one.
    """
    B, C, H, W = x.shape
    r = k.shape[1] // 2
    k = k.repeat_interleave(C, 0)  # B*C x K: one group per (sample, channel)
    xp = F.pad(x, (r, r, r, r), mode="reflect").view(1, B * C, H + 2 * r, W + 2 * r)
    if x.device.type == "cpu" if channels_last is None else channels_last:
        xp = xp.contiguous(memory_format=torch.channels_last)
    out = F.conv2d(xp, k.view(B * C, 1, 1, -1), groups=B * C)  # 1 x BC x H+2r x W
    out = F.conv2d(out, k.view(B * C, 1, -1, 1), groups=B * C)  # 1 x BC x H x W
    return out.reshape(B, C, H, W)  # back to contiguous NCHW


@_fp32
def gaussian_blur(x: torch.Tensor, p: float, sigma_range: Sequence[float],
                  generator: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur with per-sample sigma ~ U(sigma_range), probability p each.

    Kernel as the reference ``random_blur``: radius = (H // 10) // 2, side 2 * radius + 1 (9 px
    at 96 px, 3 px at 32 px, none below 20 px). Per-sample kernels run as one grouped conv
    (B*C groups) on the blurred samples. Padding reflects (the reference zero-pads, which
    darkens the border and changes the mean of a flat image).

    Args:
        x: B x C x H x W.
        p: per-sample probability of blurring.
        sigma_range: (lo, hi) of sigma in pixels.

    Returns:
        B x C x H x W (a new tensor, or x itself when nothing is blurred).
    """
    B, _, H, _ = x.shape
    r = (H // 10) // 2
    if p <= 0 or r == 0:
        return x
    u = _draw(generator, B, 2)  # kernels and selection on the generator's device (module doc)
    sigma = (sigma_range[0] + (sigma_range[1] - sigma_range[0]) * u[:, 1]).clamp_min(1e-6)
    t = torch.arange(-r, r + 1, device=u.device, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma[:, None] ** 2))  # B x K
    return _on_samples(_blur, x, u[:, 0] < p, k / k.sum(1, keepdim=True))


# ---------------------------------------------------------------- normalisation and recipe


def _stat(v: Stats, x: torch.Tensor) -> torch.Tensor:
    t = v.to(x.device, torch.float32) if torch.is_tensor(v) else _const(tuple(v), x.device)
    return t.view(1, -1, 1, 1)


def normalize(x: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """(x - mean) / std per channel: B x C x H x W -> same."""
    return (x - _stat(mean, x)) / _stat(std, x)


def denormalize(x: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """Inverse of ``normalize``: x * std + mean per channel."""
    return x * _stat(std, x) + _stat(mean, x)


def blur_probability(cfg: Augment, side: int) -> float:
    """``cfg.blur_p``, or when None 0.5 above 32 px and 0 at <= 32 px (the reference's CIFAR)."""
    if cfg.blur_p is not None:
        return cfg.blur_p
    return 0.5 if side > 32 else 0.0


@_fp32
def simclr_augment(x: torch.Tensor, cfg: Augment, mean: Stats, std: Stats,
                   generator: torch.Generator,
                   size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """One SimCLR view per sample: crop+flip -> jitter -> grayscale -> blur -> normalize.

    Args:
        x: B x C x H x W uint8 (or float in [0, 1]) on the device that does the work.
        cfg: the augmentation settings.
        mean, std: per-channel statistics of the [0, 1] images (length C).
        size: output side or (height, width); None keeps H x W.

    Returns:
        B x C x out_h x out_w float32, normalized.
    """
    out = _pair(size) if size is not None else (x.shape[2], x.shape[3])
    x = random_resized_crop(x, out, cfg.crop_scale, cfg.crop_ratio, generator, cfg.flip_p,
                            cfg.crop_interpolation)
    x = color_jitter(x, cfg.jitter_strength, cfg.jitter_p, generator)
    x = random_grayscale(x, cfg.gray_p, generator)
    x = gaussian_blur(x, blur_probability(cfg, out[0]), cfg.blur_sigma, generator)
    return x.sub_(_stat(mean, x)).div_(_stat(std, x))  # normalize; x is ours to overwrite


def two_views(x: torch.Tensor, cfg: Augment, mean: Stats, std: Stats,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views of each image from one batched call on the batch repeated twice.

    Args:
        x: B x C x H x W uint8 (or float in [0, 1]).

    Returns:
        (v1, v2), each B x C x H x W float32 normalized; v1[i] and v2[i] come from x[i].
    """
    views = simclr_augment(x.repeat(2, 1, 1, 1), cfg, mean, std, generator)
    return views[: x.shape[0]], views[x.shape[0]:]


__all__ = [
    "LUMA", "adjust_hue", "blur_probability", "color_jitter", "denormalize", "gaussian_blur",
    "grayscale", "hsv_to_rgb", "normalize", "random_flip", "random_grayscale",
    "random_resized_crop", "rgb_to_hsv", "simclr_augment", "to_float", "two_views",
]
