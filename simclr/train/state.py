"""A training run's two halves: `Run`, what stays fixed while it trains (config,
data, schedule, places, process role), and `TrainState`, what a step changes (model,
optimizer, scaler, step, losses); `build` makes both, `resume` loads a checkpoint
into the state. The loop that uses them is `simclr.train.loop.train`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from simclr import config as C
from simclr.data.loader import TensorLoader
from simclr.data.stream import StreamLoader
from simclr.errors import SimCLRError
from simclr.evaluation.splits import eval_data, monitor_config
from simclr.models.factory import build_model
from simclr.train import dist
from simclr.train import tensorboard as tboard
from simclr.train.ema import weight_average
from simclr.train.optim import build_optimizer, lr_at, scaled_lr, step_counts
from simclr.train.rundir import RunDir, check_resume, load_model_state, set_rng_state


def monitor_every(cfg: C.Config) -> int:
    """Epochs between online kNN evaluations: ``eval.every``, or 4 times a run when -1."""
    return cfg.eval.every if cfg.eval.every >= 0 else max(1, cfg.train.epochs // 4)


@dataclass
class Run:
    """What stays fixed while a run trains: config, data, schedule, places, process role."""

    cfg: C.Config
    run_dir: Path
    log: Any
    device: torch.device
    precision: str
    loader: TensorLoader | StreamLoader
    labels: torch.Tensor | None  # per-image labels for loss.supervised, else None
    n: int  # training images (all ranks)
    shape: tuple[int, int]  # channels, side
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    epochs: int  # > train.epochs under step_rule=reference (the last one partial)
    stop: int  # total_steps, or train.max_steps
    peak_lr: float
    memory_format: torch.memory_format
    train_model: torch.nn.Module  # the model, wrapped by DDP / compile where asked
    gather: Any  # dist.gather_with_grad under DDP, else None
    monitor: dict | None  # the kNN monitor's labeled images (rank 0)
    every: int  # epochs between monitor runs; 0 = off
    tb: tboard.TensorBoard | None
    rank: int
    main: bool

    @property
    def files(self) -> RunDir:
        return RunDir(self.run_dir)

    def record(self, rec: dict) -> None:
        """One metrics.jsonl line (and TensorBoard scalars)."""
        self.files.record(rec)
        if self.tb is not None:
            self.tb.record(rec)


@dataclass
class TrainState:
    """What a step changes; a checkpoint holds all of it."""

    model: torch.nn.Module  # the SimCLR model (unwrapped)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    epoch_loss: torch.Tensor  # this epoch's summed loss, on the device (no sync per step)
    window_loss: torch.Tensor  # the current log window's summed loss
    step: int = 0
    lr: float = 0.0
    elapsed: float = 0.0  # training seconds, across resumes
    window_steps: int = 0
    window_start: float = field(default_factory=time.perf_counter)
    history: list[float] = field(default_factory=list)  # per-epoch mean loss
    average: torch.nn.Module | None = None  # the encoder's weight average (train.ema > 0)

    @property
    def encoder(self) -> torch.nn.Module:
        """The encoder the run exports, evaluates and monitors: the weight average if any."""
        return self.average if self.average is not None else self.model.encoder


def build(cfg: C.Config, run_dir: Path, log, images: torch.Tensor | StreamLoader,
          device: torch.device, precision: str, labels: torch.Tensor | None = None,
          encoder: torch.nn.Module | None = None) -> tuple[Run, TrainState]:
    """The run's fixed parts and a fresh state (model initialized from ``train.seed``)."""
    rank, world, main = dist.rank(), dist.world_size(), dist.is_main()
    if isinstance(images, StreamLoader):
        loader, n, (channels, side, _) = images, len(images.files), images.shape
    else:
        n, channels, side = images.shape[0], images.shape[1], images.shape[-1]
        loader = TensorLoader(images.to(device), cfg.train.batch_size, cfg.train.seed, rank,
                              world)
    torch.manual_seed(cfg.train.seed)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = build_model(cfg.model, channels, side, encoder).to(device, memory_format=fmt)
    if world > 1 and cfg.model.sync_bn:
        model = dist.convert_batchnorm(model)
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    total, warmup = step_counts(n, cfg.train.batch_size, cfg.train.epochs,
                                cfg.optim.warmup_epochs, cfg.train.step_rule)
    every, monitor = monitor_every(cfg), None
    if every and main:
        try:
            monitor = eval_data(monitor_config(cfg))  # labeled bank + test, uint8 on the CPU
        except SimCLRError as e:
            log(f"kNN monitor off: {e}")
    dist.wait_for_main()  # rank 0 alone loaded the monitor's images
    run = Run(cfg, run_dir, log, device, precision, loader, labels, n, (channels, side),
              len(loader), total, warmup, math.ceil(total / len(loader)),
              min(total, cfg.train.max_steps or total),
              scaled_lr(cfg.optim.lr, cfg.train.batch_size, cfg.optim.lr_scaling), fmt,
              train_model, dist.gather_with_grad if world > 1 else None, monitor, every,
              tboard.TensorBoard(run_dir) if cfg.train.tensorboard and main else None,
              rank, main)
    acc = torch.float32 if device.type == "mps" else torch.float64
    state = TrainState(model, build_optimizer(model, cfg.optim),
                       torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
                       torch.zeros((), dtype=acc, device=device),
                       torch.zeros((), dtype=acc, device=device),
                       average=weight_average(model.encoder) if cfg.train.ema > 0 else None)
    return run, state


def resume(run: Run, state: TrainState, force: bool) -> None:
    """Load the run dir's checkpoint into ``state`` (refusing changed settings unless
    ``force``), trim the metrics log to it, and save the resolved config."""
    files = run.files
    if files.checkpoint.exists():
        saved = files.load_checkpoint()
        check_resume(saved["config"], run.cfg.to_dict(), force, run.run_dir)
        load_model_state(state.model, saved["model"], files.checkpoint)
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        state.step, state.elapsed = saved["step"], saved["elapsed"]
        state.history = list(saved["loss_history"])
        state.epoch_loss.fill_(saved["epoch_loss_sum"])
        if state.average is not None:  # a run resumed with train.ema newly on (--force) starts
            source = saved.get("average")  # its average from the encoder as it is
            load_model_state(state.average, source if source is not None else
                             state.model.encoder.state_dict(), files.checkpoint)
        if run.main:
            files.trim_metrics(state.step)
    state.lr = lr_at(state.step, run.peak_lr, run.warmup_steps, run.total_steps)
    if run.main:
        files.save_config(run.cfg)
