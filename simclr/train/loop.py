"""The training loop (`train`) and what it calls, each named: `advance` (one
step), `log_window`, `end_epoch` (history, kNN monitor, log), `save` and
`finish` (export). All randomness after model init is a pure function of the seed: the
epoch's shuffle of ``(seed, epoch)`` and the step's augmentations of ``(seed, step)``. A run
resumed from any checkpoint therefore replays exactly the batches and views an uninterrupted
run would see.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from simclr import config as C
from simclr.augment.views import make_views, size_scale
from simclr.config import CUSTOM
from simclr.data.loader import batch_labels
from simclr.data.stream import StreamLoader
from simclr.errors import SimCLRError
from simclr.models.factory import encoder_spec
from simclr.runtime import allocator
from simclr.runtime.compute import step_generator
from simclr.train import dist
from simclr.train.ema import update_average
from simclr.train.monitor import knn_monitor
from simclr.train.optim import lr_at, set_lr
from simclr.train.rundir import rng_state
from simclr.train.state import Run, TrainState
from simclr.train.step import train_step


def encoder_meta(cfg: C.Config, in_channels: int, image_size: int, epoch: int,
                 step: int, model=None) -> dict[str, Any]:
    """What ``load_encoder`` needs to rebuild and feed the encoder (``model``: the trained
    SimCLR model, for its feature dimension and a custom encoder's class name), and with
    ``train.ema`` the decay of the weight average the file holds."""
    extra: dict[str, Any] = {"ema": cfg.train.ema} if cfg.train.ema > 0 else {}
    if model is not None:
        extra["feature_dim"] = model.feature_dim
        if cfg.model.arch == CUSTOM:
            cls = type(model.encoder)
            extra["module"] = f"{cls.__module__}.{cls.__qualname__}"
    return {**extra, **encoder_spec(cfg.model, in_channels, image_size),
            "image_size": image_size, "mean": list(cfg.augment.mean),
            "std": list(cfg.augment.std), "dataset": cfg.data.name, "epoch": epoch,
            "step": step}


def train(run: Run, state: TrainState) -> Path:
    """The loop: for each step, the step; a log when due; at an epoch's end, the kNN monitor
    and a save (and a save every ``train.checkpoint_every`` steps inside an epoch)."""
    announce(run, state)
    state.model.train()
    while state.step < run.stop:
        epoch, first = divmod(state.step, run.steps_per_epoch)
        start_window(state)
        with progress_bar(run, epoch, first) as bar:
            for x, y in batches(run, epoch, first):
                advance(run, state, x, y)
                bar.update(1)
                if log_due(run, state):
                    log_window(run, state, epoch, bar)
                if checkpoint_due(run, state):
                    save(run, state, mid_epoch=True)
                if state.step >= run.stop:
                    break
        if at_epoch_end(run, state):
            end_epoch(run, state, epoch)
        save(run, state)
    return finish(run, state)


def announce(run: Run, state: TrainState) -> None:
    """Warnings for likely mistakes, then the run's one-line description."""
    cfg, (channels, side) = run.cfg, run.shape
    for message in C.advice(cfg) if run.main else []:  # after every check that can refuse
        warnings.warn(message, stacklevel=4)
    loader = run.loader
    streamed = f" streamed by {loader.workers} workers" if isinstance(loader, StreamLoader) else ""
    world = dist.world_size()
    run.log(f"simclr: {cfg.data.name} {run.n} images {channels}x{side}x{side}{streamed}, "
            f"{cfg.model.arch} x{cfg.model.width} on {run.device} ({run.precision})"
            + (f" x {world} processes" if world > 1 else "") + f", {allocator.describe()}, "
            f"batch {cfg.train.batch_size}, {run.epochs} epochs of {run.steps_per_epoch} steps "
            f"({run.total_steps} steps) -> {run.run_dir}"
            + (f" (resuming at step {state.step})" if state.step else ""))


def progress_bar(run: Run, epoch: int, first: int) -> tqdm:
    """The epoch's bar (closed on an interrupt too: it clears its line before any message)."""
    return tqdm(total=run.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{run.epochs}",
                disable=not (run.cfg.train.progress and run.main), leave=False,
                dynamic_ncols=True, file=sys.stderr)


def batches(run: Run, epoch: int, first: int) -> Iterator[tuple[torch.Tensor, Any]]:
    """``(images, labels or None)`` of the epoch's batches from batch ``first`` on."""
    xs = run.loader.batches(epoch, first)
    if run.labels is None:
        return ((x, None) for x in xs)
    return zip(xs, batch_labels(run.loader, run.labels, epoch, first), strict=False)


def at_epoch_end(run: Run, state: TrainState) -> bool:
    """Whether the last step ended an epoch (the run's last step ends its partial one)."""
    return state.step % run.steps_per_epoch == 0 or state.step == run.total_steps


def log_due(run: Run, state: TrainState) -> bool:
    """A window line every ``train.log_every`` steps, at an epoch's end and at the stop."""
    return (state.step % run.cfg.train.log_every == 0 or at_epoch_end(run, state)
            or state.step >= run.stop)


def checkpoint_due(run: Run, state: TrainState) -> bool:
    """A checkpoint inside an epoch every ``train.checkpoint_every`` steps (0: none): the
    epoch's end and the stop save anyway."""
    every = run.cfg.train.checkpoint_every
    return bool(every) and state.step % every == 0 and not at_epoch_end(run, state) \
        and state.step < run.stop


def start_window(state: TrainState) -> None:
    """A new log window: its steps and its clock."""
    state.window_steps, state.window_start = 0, time.perf_counter()


def advance(run: Run, state: TrainState, x: torch.Tensor, y: torch.Tensor | None) -> None:
    """One step: the lr of this step, the views of ``(seed, step)`` at this step's size,
    `train_step`, the encoder's weight average."""
    cfg = run.cfg
    state.lr = lr_at(state.step, run.peak_lr, run.warmup_steps, run.total_steps)
    set_lr(state.optimizer, state.lr)
    views = [v.contiguous(memory_format=run.memory_format) for v in make_views(
        x, cfg.augment, cfg.augment.mean, cfg.augment.std,
        step_generator(cfg.train.seed, state.step, stream=run.rank),
        size_scale(cfg.augment, state.step, run.total_steps))]  # one per size
    b = x.shape[0]
    if run.tb is not None and state.step % run.steps_per_epoch == 0 and len(views[0]) >= 2 * b:
        run.tb.views(views[0][:b], views[0][b:2 * b], cfg.augment.mean, cfg.augment.std,
                     state.step)
    loss = train_step(run.train_model, state.optimizer, state.scaler,
                      views[0] if len(views) == 1 else views, cfg, run.device, run.precision,
                      run.rank, run.gather, y)
    if state.average is not None:
        update_average(state.average, state.model.encoder, cfg.train.ema)
    state.step, state.window_steps = state.step + 1, state.window_steps + 1
    state.window_loss += loss
    state.epoch_loss += loss


def guard_finite(run: Run, state: TrainState) -> None:
    """Stop (every rank) before a non-finite loss reaches a checkpoint or the log."""
    total = float(dist.reduce_mean(state.epoch_loss + state.window_loss))
    if not math.isfinite(total):
        raise SimCLRError(
            f"loss became {total} by step {state.step} (lr {state.lr:.4g}); the last good "
            f"checkpoint in {run.run_dir} is kept; lower optim.lr, or use "
            "train.precision=bf16/fp32 if fp16 overflowed")


def log_window(run: Run, state: TrainState, epoch: int, bar: tqdm) -> None:
    """A ``kind: window`` line: the window's mean loss, lr, images/s; a new window starts."""
    guard_finite(run, state)
    dt = time.perf_counter() - state.window_start
    state.elapsed += dt
    mean_loss = float(dist.reduce_mean(state.window_loss)) / state.window_steps
    speed = state.window_steps * run.cfg.train.batch_size / dt
    if run.main:
        run.record({"kind": "window", "epoch": epoch + 1, "step": state.step, "loss": mean_loss,
                    "lr": state.lr, "images_per_s": speed, "time": state.elapsed})
    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{state.lr:.3g}", img_s=f"{speed:.0f}")
    state.window_loss.zero_()
    start_window(state)


def end_epoch(run: Run, state: TrainState, epoch: int) -> None:
    """The epoch's mean loss into the history, the kNN monitor when due, the epoch line."""
    done = state.step - epoch * run.steps_per_epoch  # steps of this epoch (the last: partial)
    state.history.append(float(dist.reduce_mean(state.epoch_loss)) / done)
    state.epoch_loss.zero_()
    knn, cfg = "", run.cfg
    if run.monitor is not None and ((epoch + 1) % run.every == 0
                                    or state.step == run.total_steps):
        t = time.perf_counter()
        top1 = knn_monitor(state.encoder, run.monitor, cfg, run.device, run.precision)
        state.model.train()
        run.record({"kind": "knn", "epoch": epoch + 1, "step": state.step, "knn_top1": top1,
                    "k": cfg.eval.knn_k, "n_train": len(run.monitor["train"][1]),
                    "n_test": len(run.monitor["test"][1]),
                    "seconds": time.perf_counter() - t, "time": state.elapsed})
        knn = f" kNN top1 {100 * top1:.2f}%"
    if run.main:
        run.record({"kind": "epoch", "epoch": epoch + 1, "step": state.step,
                    "loss": state.history[-1], "lr": state.lr, "time": state.elapsed})
    run.log(f"epoch {epoch + 1}/{run.epochs} loss {state.history[-1]:.4f} lr {state.lr:.4g} "
            f"time {state.elapsed:.0f}s{knn}")


def save(run: Run, state: TrainState, mid_epoch: bool = False) -> None:
    """Checkpoint the state (rank 0 writes; the others wait, before for rank 0's kNN monitor
    and after for its write, without a collective's timeout). ``mid_epoch``: the training
    seconds of the open log window count too."""
    dist.wait_for_main()
    unlogged = time.perf_counter() - state.window_start if mid_epoch else 0.0
    guard_finite(run, state)
    epoch_total = float(dist.reduce_mean(state.epoch_loss))
    if run.main:
        run.files.save_checkpoint({
            "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "scaler": state.scaler.state_dict(), "step": state.step,
            "epoch": state.step // run.steps_per_epoch, "elapsed": state.elapsed + unlogged,
            "loss_history": state.history, "epoch_loss_sum": epoch_total,
            "config": run.cfg.to_dict(), "rng": rng_state(),
            **({"average": state.average.state_dict()} if state.average is not None else {})})
    dist.wait_for_main()


def finish(run: Run, state: TrainState) -> Path:
    """Export the encoder and the loss history (rank 0); say how the run ended."""
    if run.tb is not None:
        run.tb.close()
    if run.main:
        meta = encoder_meta(run.cfg, *run.shape, state.step // run.steps_per_epoch, state.step,
                            state.model)
        run.files.export_encoder(state.encoder, meta)
        run.files.save_losses(state.history)
    if state.step >= run.total_steps:
        run.log(f"done: {run.files.encoder}")
    else:
        run.log(f"stopped at step {state.step} of {run.total_steps} (train.max_steps="
                f"{run.cfg.train.max_steps}); to go on, run the same command with a larger "
                "--train.max_steps (0 = no limit)")
    return run.run_dir
