"""Where and how the numbers are computed: device choice, precision, autocast, and seeded
generators that make every random draw a pure function of (seed, stream, counter)."""

from __future__ import annotations

import contextlib

import torch

from simclr.errors import SimCLRError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda > mps > cpu; anything else must exist on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SimCLRError(f"unknown train.device '{name}'; use auto, cpu, cuda, cuda:N or mps") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SimCLRError("train.device is cuda but no CUDA GPU is visible; use train.device=cpu")
    return device


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, c, lambda: False)() for c in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the device computes it natively, fp16 on older CUDA, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_bf16():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """Autocast context for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def step_generator(seed: int, counter: int, device: torch.device, stream: int = 0):
    """A generator on ``device`` seeded from (seed, stream, counter) by a splitmix64 hash."""
    x = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + counter) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    g = torch.Generator(device=device)
    g.manual_seed((x ^ (x >> 31)) & (2**63 - 1))
    return g
