"""Features of a frozen encoder as pure functions: the input checks, extraction (no
augmentation, eval mode) and the raw-pixel baseline."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from simclr.augment.ops import normalize
from simclr.errors import SimCLRError


def check_images(images: Tensor, name: str = "images") -> None:
    """SimCLRError unless ``images`` are N x C x H x W (N > 0) uint8, or float in [0, 1]: a
    float tensor outside [0, 1] (0-255 values, or already normalized) is refused, never
    silently misread."""
    if images.ndim != 4 or not len(images):
        raise SimCLRError(f"{name} must be N x C x H x W with N > 0, got {images.dtype} "
                          f"{tuple(images.shape)}")
    if images.shape[1] > 4 and images.shape[-1] in (1, 3):
        raise SimCLRError(f"{name} of shape {tuple(images.shape)} look channels-last "
                          "(N x H x W x C); pass images.permute(0, 3, 1, 2)")
    if images.dtype == torch.uint8:
        return
    if not images.is_floating_point():
        raise SimCLRError(f"{name} are {images.dtype}; pass uint8 (0-255) or float in [0, 1], "
                          "e.g. images.to(torch.uint8)")
    lo, hi = float(images.min()), float(images.max())
    if not (0.0 <= lo and hi <= 1.0):  # NaN fails too
        raise SimCLRError(f"float {name} must be in [0, 1] but span [{lo:.4g}, {hi:.4g}]; pass "
                          "uint8 (0-255) or float in [0, 1] (x / 255), not normalized images")


@torch.no_grad()  # not inference_mode: its tensors could not enter autograd later
def extract_features(encoder: nn.Module, images: Tensor, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, batch_size: int = 512,
                     device: torch.device | str | None = None, precision: str = "fp32") -> Tensor:
    """Frozen-encoder features of images N x C x H x W -> N x D float32 on the CPU.

    Per batch: to ``device``, float in [0, 1] (uint8 is divided by 255; float images must
    already be in [0, 1]), ``(x - mean) / std`` per channel when given, channels_last,
    autocast for ``precision`` "bf16"/"fp16". No augmentation. The encoder runs in eval mode
    (BatchNorm uses running stats) and gets its previous train/eval mode back afterwards.
    Outputs with more than 2 dims are flattened per image.

    Args:
        images: uint8, or float in [0, 1] (anything else is refused: see ``check_images``).
        mean, std: per-channel statistics of the [0, 1] images; None feeds them as they are.
        device: where to run; default the device of the encoder's parameters (CPU if none).
    """
    check_images(images)
    c = images.shape[1]
    mean = [0.0] * c if mean is None else mean
    std = [1.0] * c if std is None else std
    if len(mean) != c or len(std) != c:
        raise SimCLRError(f"mean/std have {len(mean)}/{len(std)} values for {c}-channel images; "
                          "give one value per channel")
    if precision not in ("fp32", "bf16", "fp16"):
        raise SimCLRError(f"unknown precision '{precision}'; use fp32, bf16 or fp16")
    if device is None:
        device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    device = torch.device(device)
    m = torch.tensor(mean, dtype=torch.float32, device=device)
    s = torch.tensor(std, dtype=torch.float32, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    was_training = encoder.training
    encoder.eval()
    try:
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(device, non_blocking=True).float() / scale
            x = normalize(x, m, s).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                h = encoder(x)  # B x D
            out.append(h.float().flatten(1).cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out)


def pixel_features(images: Tensor) -> Tensor:
    """Raw-pixel baseline: N x C x H x W (uint8, or float in [0, 1]) -> N x (C*H*W) float32
    in [0, 1]."""
    check_images(images)
    flat = images.reshape(images.shape[0], -1).float()
    return flat / 255 if images.dtype == torch.uint8 else flat


__all__ = ["check_images", "extract_features", "pixel_features"]
