"""``simclr bench``: the full pretraining step against the bare model step, in one process.

(a) bare: model forward + backward + NT-Xent + optimizer on views made once beforehand;
(b) full: device-side loader + the augmented views (``augment.views``) + the same step, as
``simclr pretrain`` runs.
Both after warm-up, median images/s over several timed windows, same model, batch, precision
and layout; their ratio is our overhead. Also achieved GFLOP/s (torch.utils.flop_counter) and
peak memory. ``python -m simclr.tools.bench`` works too.
"""

from __future__ import annotations

import itertools
import json
import platform
import resource
import statistics
import time
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from simclr import config as C
from simclr.augment.views import make_views, size_scale, view_groups
from simclr.data.datasets import DATASETS
from simclr.data.loader import TensorLoader
from simclr.models.factory import build_model
from simclr.runtime import allocator
from simclr.runtime.compute import cpu_contention, resolve_device, resolve_precision, step_generator
from simclr.runtime.files import atomic_write
from simclr.train.optim import build_optimizer, set_lr, step_counts
from simclr.train.step import train_step


def _shape(cfg: C.Config) -> tuple[int, int]:
    spec = DATASETS[cfg.data.name]
    return spec["channels"], cfg.data.image_size or spec["size"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, steps: int, warmup: int, windows: int, batch: int) -> float:
    """Median images/s over ``windows`` windows of ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    rates = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        rates.append(steps * batch / (time.perf_counter() - t))
    return statistics.median(rates)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench_one(cfg: C.Config, steps: int = 5, warmup: int = 2, windows: int = 3,
              compile_mode: str | None = None) -> dict:
    """Time the bare and the full step for one configuration; returns a result row.

    ``compile_mode`` is torch.compile's ``mode`` when ``train.compile`` is on (e.g.
    ``reduce-overhead``: CUDA graphs); None is its default.
    """
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    channels, side = _shape(cfg)
    batch = cfg.train.batch_size
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4 * batch, channels, side, side), dtype=torch.uint8,
                           generator=g).to(device)
    mean, std = [0.5] * channels, [0.25] * channels
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, channels, side).to(device, memory_format=fmt)
    optimizer = build_optimizer(model, cfg.optim)
    set_lr(optimizer, 1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step_model = torch.compile(model, mode=compile_mode) if cfg.train.compile else model

    def views(x: torch.Tensor, step: int):  # as the loop makes them: one tensor per view size
        out = [v.contiguous(memory_format=fmt) for v in make_views(
            x, cfg.augment, mean, std, step_generator(cfg.train.seed, step))]
        return out[0] if len(out) == 1 else out

    premade = views(images[:batch], 0)

    def bare() -> None:
        train_step(step_model, optimizer, scaler, premade, cfg, device, precision)

    loader = TensorLoader(images, batch, cfg.train.seed)
    counter = itertools.count()

    def batches():
        for epoch in itertools.count():
            yield from loader.batches(epoch)

    stream = batches()

    def full() -> None:
        train_step(step_model, optimizer, scaler, views(next(stream), next(counter)), cfg,
                   device, precision)

    bare_ips = _time(bare, device, steps, warmup, windows, batch)
    full_ips = _time(full, device, steps, warmup, windows, batch)
    step_flops = _count_flops(model, optimizer, scaler, premade, cfg, device, precision)
    return {"arch": cfg.model.arch, "width": cfg.model.width, "image": f"{channels}x{side}",
            "batch": batch, "device": str(device), "precision": precision,
            "layout": "channels_last" if cfg.train.channels_last else "NCHW",
            "compile": cfg.train.compile, "compile_mode": compile_mode if cfg.train.compile
            else None, "bare_img_s": bare_ips, "full_img_s": full_ips,
            "ratio": full_ips / bare_ips, "gflop_per_step": step_flops / 1e9,
            "bare_gflop_s": step_flops / 1e9 * bare_ips / batch,
            "peak_mem_mb": _peak_memory_mb(device)}


def _count_flops(model, optimizer, scaler, views, cfg: C.Config, device: torch.device,
                 precision: str) -> int:
    """Model FLOPs of one training step on ``views`` (torch.utils.flop_counter)."""
    flops = FlopCounterMode(display=False)
    with flops:
        train_step(model, optimizer, scaler, views, cfg, device, precision)
    return flops.get_total_flops()


def run_tflop(cfg: C.Config, n_images: int) -> tuple[float, int]:
    """Model TFLOP of a whole run on ``n_images`` and its steps: every step counted at its
    own view sizes (``augment.size_start``'s schedule), one count per distinct size.

    Returns:
        (TFLOP, steps) of the run (``train.max_steps`` stops it early).
    """
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    channels, side = _shape(cfg)
    t = cfg.train
    total, _ = step_counts(n_images, t.batch_size, t.epochs, cfg.optim.warmup_epochs,
                           t.step_rule)
    steps = min(total, t.max_steps or total)
    by_sides: Counter[tuple] = Counter()
    scale_of: dict[tuple, float] = {}
    for step in range(steps):
        scale = size_scale(cfg.augment, step, total)
        sides = tuple(g[1] for g in view_groups(cfg.augment, (side, side), scale))
        by_sides[sides] += 1
        scale_of.setdefault(sides, scale)
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    torch.manual_seed(t.seed)
    model = build_model(cfg.model, channels, side).to(device, memory_format=fmt)
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    images = torch.randint(0, 256, (t.batch_size, channels, side, side), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    flops = 0
    for sides, count in by_sides.items():
        views = [v.contiguous(memory_format=fmt) for v in make_views(
            images, cfg.augment, [0.5] * channels, [0.25] * channels,
            step_generator(t.seed, 0), scale_of[sides])]
        flops += count * _count_flops(model, optimizer, scaler,
                                      views[0] if len(views) == 1 else views, cfg, device,
                                      precision)
    return flops / 1e12, steps


def matrix(cfg: C.Config, with_compile: bool) -> list[C.Config]:
    """fp32/bf16 x NCHW/channels_last (x compile off/on) variants of ``cfg``."""
    out = []
    compiles = (False, True) if with_compile else (cfg.train.compile,)
    for precision, layout, comp in itertools.product(("fp32", "bf16"), (False, True), compiles):
        train = replace(cfg.train, precision=precision, channels_last=layout, compile=comp)
        out.append(replace(cfg, train=train))
    return out


def environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "allocator": allocator.describe()}


def format_rows(rows: list[dict]) -> str:
    head = ["precision", "layout", "compile", "bare img/s", "full img/s", "full/bare",
            "GFLOP/s", "peak MB"]
    lines = [head] + [[r["precision"], r["layout"], str(r["compile"]), f"{r['bare_img_s']:.1f}",
                       f"{r['full_img_s']:.1f}", f"{r['ratio']:.3f}", f"{r['bare_gflop_s']:.0f}",
                       f"{r['peak_mem_mb']:.0f}"] for r in rows]
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(x, widths, strict=True))
                     for x in lines)


def run(cfg: C.Config, steps: int, warmup: int, windows: int, with_matrix: bool,
        with_compile: bool, json_path: Path | None, images: int = 0, log=print) -> list[dict]:
    env = environment()
    r0 = cfg
    log(f"simclr bench: {r0.model.arch} x{r0.model.width}, {r0.data.name}-shaped "
        f"{'x'.join(map(str, _shape(r0)))} images, batch {r0.train.batch_size}, torch "
        f"{env['torch']}, {env['threads']} threads, allocator {env['allocator']}")
    if message := cpu_contention(resolve_device(cfg.train.device)):
        warnings.warn(message + " (timings taken now are not the machine's)", stacklevel=2)
    configs = matrix(cfg, with_compile) if with_matrix else [cfg]
    rows = [bench_one(c, steps, warmup, windows) for c in configs]
    log(format_rows(rows))
    if images:
        tflop, n_steps = run_tflop(cfg, images)
        log(f"a run on {images} images: {n_steps} steps, {tflop:.1f} TFLOP of model compute "
            f"({1000 * tflop / n_steps:.1f} GFLOP a step on average)")
        for row in rows:
            row.update(run_images=images, run_steps=n_steps, run_tflop=tflop)
    if json_path is not None:
        text = json.dumps({"environment": env, "rows": rows}, indent=2)
        atomic_write(json_path, lambda tmp: tmp.write_text(text))
        log(f"wrote {json_path}")
    return rows

