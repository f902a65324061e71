"""Streaming vs in-memory image folders, each feeding the real pretraining step.

Writes a folder of ``--images`` JPEGs (``--source`` px, smooth random "photo-like" images, 10
class folders) to a temporary directory, then times images/s of
(a) in-memory: ``load_split("folder")`` once (decode time reported apart), ``TensorLoader`` on
    the device;
(b) streaming: ``StreamLoader`` decoding + resizing each batch in DataLoader workers;
each feeding ``two_views`` + ``train_step`` of a ResNet-18 x0.25 (bf16 autocast where the device
has it, channels_last), as ``simclr pretrain`` runs. Also (c) the streaming loader alone, with
no training: the decode ceiling. Timed in ``--rounds`` alternating rounds (the order flips each
round, to cancel drift of a shared machine's load) of ``--warmup`` untimed steps (which also
drain the batches the stream's workers decoded while the other path ran) then ``--steps`` timed
steps. The headline is the median over rounds of streaming / in-memory, each ratio taken from
two neighbouring timings; per-round figures and the load average are printed too.

    python benchmarks/stream_bench.py                      # 3000 images 96 px -> 64, batch 128
    python benchmarks/stream_bench.py --images 500 --steps 5 --rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from simclr import config as C
from simclr.augment.ops import two_views
from simclr.data.datasets import load_split
from simclr.data.loader import TensorLoader
from simclr.data.stream import StreamLoader
from simclr.models.factory import build_model
from simclr.runtime import allocator
from simclr.runtime.compute import resolve_device, resolve_precision, step_generator
from simclr.train.optim import build_optimizer, set_lr
from simclr.train.step import train_step


def write_photos(root: Path, n: int, side: int, classes: int = 10, seed: int = 0) -> None:
    """n smooth random RGB JPEGs (quality 90): 6x6 noise upsampled bicubic, plus grain."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), np.int16)
        grain = rng.integers(-8, 9, smooth.shape, dtype=np.int16)
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(loader) -> itertools.chain:
    return itertools.chain.from_iterable(loader.batches(e) for e in itertools.count())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--source", type=int, default=96, help="side of the written JPEGs")
    p.add_argument("--size", type=int, default=64, help="data.image_size the loaders resize to")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="timed steps per path per round")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per path per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="stream workers (default min(4, "
                                                             "CPUs))")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the training step "
                   "(0: torch's default; 1 on a machine shared with other jobs, where OpenMP "
                   "teams of 2+ threads stall)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    cfg = C.Config()
    cfg.model.arch, cfg.model.width = "resnet18", 0.25
    cfg.train.batch_size, cfg.train.precision = args.batch, precision
    fmt = torch.channels_last
    mean, std = [0.5] * 3, [0.25] * 3

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        t = time.perf_counter()
        write_photos(root, args.images, args.source)
        write_s = time.perf_counter() - t
        os.environ["SIMCLR_CACHE"] = str(Path(tmp) / ".cache")  # a cold in-memory load
        t = time.perf_counter()
        images, _ = load_split("folder", "train", root, image_size=args.size)
        load_s = time.perf_counter() - t
        memory = TensorLoader(images.to(device), args.batch, seed=0)
        stream = StreamLoader.from_folder(root, "train", args.size, args.batch, seed=0,
                                          device=device, workers=args.workers)
        torch.manual_seed(0)
        model = build_model(cfg.model, 3, args.size).to(device, memory_format=fmt)
        optimizer = build_optimizer(model, cfg.optim)
        set_lr(optimizer, 1e-3)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        counter = itertools.count()

        def train(x: torch.Tensor) -> None:
            v1, v2 = two_views(x, cfg.augment, mean, std,
                               step_generator(0, next(counter)))
            views = torch.cat([v1, v2]).contiguous(memory_format=fmt)
            train_step(model, optimizer, scaler, views, cfg, device, precision)

        paths = {"in-memory": (endless(memory), train), "streaming": (endless(stream), train)}
        rates, loads = {name: [] for name in paths}, []  # img/s of each round
        print(f"stream_bench: {args.images} JPEGs {args.source}px -> {args.size}px, ResNet-18 "
              f"x0.25, batch {args.batch}, {device} {precision}, {torch.get_num_threads()} "
              f"threads, {stream.workers} stream workers, allocator {allocator.describe()}")
        print(f"wrote the folder in {write_s:.1f} s; in-memory load (cold: decode + cache) "
              f"{load_s:.2f} s = {args.images / load_s:.0f} img/s", flush=True)
        for r in range(args.rounds):
            for name in list(paths) if r % 2 == 0 else list(paths)[::-1]:
                batches, fn = paths[name]
                for _ in range(args.warmup):
                    fn(next(batches))
                _sync(device)
                t = time.perf_counter()
                for _ in range(args.steps):
                    fn(next(batches))
                _sync(device)
                rates[name].append(args.steps * args.batch / (time.perf_counter() - t))
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}: in-memory {rates['in-memory'][-1]:.1f} img/s, streaming "
                  f"{rates['streaming'][-1]:.1f} img/s, load average {loads[-1]:.2f}",
                  flush=True)
        batches = endless(stream)  # the loader alone: a new pass ends the training one
        for _ in range(args.warmup):
            next(batches)
        t = time.perf_counter()
        for _ in range(args.steps * args.rounds):
            next(batches)
        decode = args.steps * args.rounds * args.batch / (time.perf_counter() - t)
        stream.close()

    ratios = [b / a for a, b in zip(rates["in-memory"], rates["streaming"], strict=True)]
    median = {name: statistics.median(v) for name, v in rates.items()}
    ratio = statistics.median(ratios)
    print(f"{'path':<20}{'median img/s':>14}{'rounds':>8}")
    for name, v in median.items():
        print(f"{name:<20}{v:>14.1f}{len(rates[name]):>8}")
    print(f"{'stream decode only':<20}{decode:>14.1f}{1:>8}")
    print(f"streaming / in-memory = {ratio:.3f} (median of the per-round ratios "
          f"{', '.join(f'{x:.3f}' for x in ratios)}; target >= 0.8)")
    if args.json:
        env = {"torch": torch.__version__, "device": str(device), "precision": precision,
               "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
               "allocator": allocator.describe(), "workers": stream.workers}
        args.json.write_text(json.dumps(
            {"environment": env, "args": vars(args) | {"json": None}, "img_s_per_round": rates,
             "load_average_per_round": loads, "ratios": ratios, "ratio": ratio,
             "decode_only_img_s": decode, "in_memory_load_s": load_s}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
