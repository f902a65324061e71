"""Extracted features cached as safetensors, keyed by everything that changes them: the
encoder's state (its digest), the images, the precision and the device type."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from simclr.config import Config
from simclr.evaluation.encoder import NormalizedEncoder
from simclr.evaluation.features import extract_features
from simclr.runtime.files import atomic_write


def _digest(tensors: list[tuple[str, Tensor]]) -> str:
    """sha256 (20 hex digits) of named tensors: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:20]


def model_digest(enc: nn.Module) -> str:
    """Identity of a module's numbers: the digest of its state (weights, BatchNorm statistics,
    and for a `NormalizedEncoder` its mean/std)."""
    return _digest(sorted(enc.state_dict().items()))


def features(enc: NormalizedEncoder, data: dict, cfg: Config, device: torch.device,
             precision: str, cache_dir: Path | None = None) -> dict[str, Tensor]:
    """Train/test features of the frozen encoder, cached as safetensors in ``cache_dir``.

    A cache file is keyed by everything that changes the features: the encoder's state
    (`model_digest`), the images themselves, the precision and the device type.
    """
    out = {}
    digest = model_digest(enc) if cache_dir is not None else None
    for split, (images, _) in data.items():
        cache = None
        if cache_dir is not None:
            key = _digest([(digest, images), (f"{device.type}:{precision}", torch.zeros(0))])
            cache = cache_dir / f"{key}.safetensors"
            if cache.exists():
                out[split] = load_file(str(cache))["features"]
                continue
        enc = enc.to(device, memory_format=torch.channels_last)  # as during training
        out[split] = extract_features(enc.encoder, images, enc.mean.flatten().tolist(),
                                      enc.std.flatten().tolist(), cfg.eval.batch_size, device,
                                      precision)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache, lambda tmp, f=out[split]: save_file({"features": f}, str(tmp)))
    return out


__all__ = ["features", "model_digest"]
