"""Where and how the numbers are computed: device choice, precision, autocast, and seeded
generators that make every random draw a pure function of (seed, stream, counter)."""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import torch

from simclr.errors import SimCLRError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda > mps > cpu; anything else must exist on this machine. A CUDA device
    also gets `cuda_fast_paths`."""
    if name == "auto":
        if torch.cuda.is_available():
            return cuda_fast_paths(torch.device("cuda"))
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
    return cuda_fast_paths(device) if device.type == "cuda" else device


def cuda_fast_paths(device: torch.device) -> torch.device:
    """Turn on cuDNN autotuning (every step has the same shapes) and TF32 for float32 matmuls
    on CUDA (those outside autocast: fp32 runs, NT-Xent's similarities); returns ``device``.

    The CUDA switch ``allow_tf32`` rather than ``set_float32_matmul_precision``, which also
    changes CPU (oneDNN) matmuls. Autotuning picks algorithms per process, one more reason GPU
    runs repeat only up to floating-point noise.
    """
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    return device


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, c, lambda: False)() for c in checks)


def cuda_has_bf16(device: torch.device) -> bool:
    """True when the CUDA GPU computes bf16 natively: compute capability >= 8.0 (Ampere on).

    Not ``torch.cuda.is_bf16_supported()``: by default it also counts emulation, so it says
    True on a V100 or T4, where bf16 runs emulated and much slower than fp16. On ROCm (whose
    capability numbers are not NVIDIA's) torch's answer is kept.
    """
    if torch.version.hip:
        return torch.cuda.is_bf16_supported()
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the device computes it natively, fp16 on older CUDA, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if cuda_has_bf16(device) else "fp16"
    if device.type == "cpu" and cpu_has_bf16():
        return "bf16"
    return "fp32"


def busy_threads(samples: int = 5, interval: float = 0.05) -> int | None:
    """Runnable threads on this machine other than the caller (median of ``samples`` reads of
    /proc/loadavg); None where that file does not exist."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return None
        if i + 1 < samples:
            time.sleep(interval)
    return int(statistics.median(counts))


def contention_warning(threads: int, cores: int, busy: int | None) -> str | None:
    """The warning for ``threads`` compute threads on ``cores`` CPUs with ``busy`` threads of
    other processes already running, or None when they fit.

    OpenMP threads spin at barriers, so one descheduled thread stalls the others: a 2-thread
    step on 2 cores with one core taken ran 15-35x slower than alone (21-50 vs 770 img/s).
    """
    if busy is None or busy < 1 or threads + busy <= cores:
        return None
    fit = max(1, cores - busy)
    return (f"{busy} other thread(s) are running on these {cores} CPUs: torch's {threads} "
            f"thread(s) will contend for them and can run >10x slower; stop the other work or "
            f"set OMP_NUM_THREADS={fit}")


def cpu_contention(device: torch.device) -> str | None:
    """`contention_warning` for this process's torch threads on a CPU device, else None
    (also when ``SIMCLR_NO_CONTENTION_WARNING=1``: the test suite sets it, as its output must
    not depend on what else runs on the machine)."""
    if device.type != "cpu" or os.environ.get("SIMCLR_NO_CONTENTION_WARNING") == "1":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return contention_warning(torch.get_num_threads(), cores or 1, busy_threads())


def autocast(device: torch.device, precision: str):
    """Autocast context for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``: itself when already there; from the CPU to a GPU through pinned
    memory with ``non_blocking``, so the copy does not wait for the GPU's queue to drain."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def step_generator(seed: int, counter: int, device: torch.device | str = "cpu",
                   stream: int = 0) -> torch.Generator:
    """A generator on ``device`` seeded from (seed, stream, counter) by a splitmix64 hash.

    Training keeps the default, the CPU: a CUDA generator's stream differs from a CPU one's for
    the same seed, so draws made on the CPU are what make a step's views the same whatever the
    training device (and a resume on another device a replay).
    """
    x = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + counter) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    g = torch.Generator(device=device)
    g.manual_seed((x ^ (x >> 31)) & (2**63 - 1))
    return g
