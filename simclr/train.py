"""``pretrain(cfg)``: the SimCLR training loop, with metrics, checkpoints and exact resume.

All randomness after model init is a pure function of the seed: the epoch's shuffle of
``(seed, epoch)`` and the step's augmentations of ``(seed, step)``. A run resumed from any
checkpoint therefore replays exactly the batches and views an uninterrupted run would see.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from simclr import allocator, dist, tboard
from simclr import config as C
from simclr.backbones import CUSTOM
from simclr.checkpoint import (
    CHECKPOINT,
    ENCODER,
    append_metrics,
    export_encoder,
    load_checkpoint,
    load_model_state,
    rng_state,
    run_lock,
    save_checkpoint,
    set_rng_state,
    trim_metrics,
)
from simclr.data import load_train
from simclr.errors import SimCLRError
from simclr.eval_run import eval_data, knn_monitor, monitor_config
from simclr.folder import list_folder
from simclr.loader import TensorLoader, batch_labels
from simclr.loss import multi_nt_xent, nt_xent
from simclr.models import RESNET_ONLY, build_model, check_encoder, resolve_stem
from simclr.optim import build_optimizer, lr_at, scaled_lr, set_lr, step_counts
from simclr.runtime import (
    autocast,
    cpu_contention,
    resolve_device,
    resolve_precision,
    step_generator,
)
from simclr.stream import StreamLoader, fits_in_memory
from simclr.views import make_views

METRICS = "metrics.jsonl"
# Keys a resumed run may change without --force: they do not alter what is computed.
RESUME_FREE = {"train.max_steps", "train.progress", "train.log_every", "train.device",
               "train.compile", "train.checkpoint_every", "train.tensorboard",
               "data.stream"}
RESUME_FREE_SECTIONS = {"eval", "probe", "finetune"}


def channel_stats(images: torch.Tensor | Iterable[torch.Tensor],
                  chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of uint8 images N x C x H x W.

    ``images`` may also be an iterable of such chunks (a streamed folder's ``chunks()``); the
    same chunks give the same bits.
    """
    chunks = images
    if isinstance(images, torch.Tensor):
        chunks = (images[i:i + chunk] for i in range(0, images.shape[0], chunk))
    total = squares = None
    n = 0
    for x in chunks:
        x = x.to(torch.float64) / 255
        if total is None:
            total = torch.zeros(x.shape[1], dtype=torch.float64)
            squares = torch.zeros(x.shape[1], dtype=torch.float64)
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (squares / n - mean**2).clamp_min(1e-12).sqrt()
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


def default_run_dir(cfg: C.Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.data.name}-{cfg.model.arch}-{stamp}"


def encoder_meta(cfg: C.Config, in_channels: int, image_size: int, epoch: int,
                 step: int, model=None) -> dict[str, Any]:
    """What ``load_encoder`` needs to rebuild and feed the encoder (``model``: the trained
    SimCLR model, for its feature dimension and a custom encoder's class name)."""
    extra = {}
    if model is not None:
        extra["feature_dim"] = model.feature_dim
        if cfg.model.arch == CUSTOM:
            cls = type(model.encoder)
            extra["module"] = f"{cls.__module__}.{cls.__qualname__}"
    return {**extra, "arch": cfg.model.arch, "width": cfg.model.width,
            "stem": resolve_stem(cfg.model.stem, image_size), "in_channels": in_channels,
            "shortcut": cfg.model.shortcut, "zero_init_residual": cfg.model.zero_init_residual,
            "init": cfg.model.init,
            "image_size": image_size, "mean": list(cfg.augment.mean),
            "std": list(cfg.augment.std), "dataset": cfg.data.name, "epoch": epoch,
            "step": step}


def _check_resume(saved: dict, cfg: C.Config, force: bool, run_dir: Path) -> None:
    changed = [k for k in C.diff(saved, cfg.to_dict())
               if k not in RESUME_FREE and k.split(".")[0] not in RESUME_FREE_SECTIONS]
    if changed and not force:
        raise SimCLRError(
            f"{run_dir} was started with other settings ({', '.join(changed)} differ); "
            "use a new --run-dir, or --force to resume with the new values")


def monitor_every(cfg: C.Config) -> int:
    """Epochs between online kNN evaluations: ``eval.every``, or 4 times a run when -1."""
    return cfg.eval.every if cfg.eval.every >= 0 else max(1, cfg.train.epochs // 4)


def check_writable(run_dir: Path) -> None:
    """Fail before any work when ``run_dir`` cannot be created or written (tries for real)."""
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a directory")
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise SimCLRError(f"cannot write the run dir {run_dir} ({e.strerror or e}); choose "
                          "another --run-dir") from None


def train_step(model, optimizer, scaler, views: torch.Tensor | list[torch.Tensor],
               cfg: C.Config, device: torch.device, precision: str, rank: int = 0,
               gather=None, labels: torch.Tensor | None = None) -> torch.Tensor:
    """One SimCLR step on the V views of B images; returns the loss.

    ``views`` is one tensor of V x B views, view-major (rows k*B .. (k+1)*B - 1: view k of
    each image; V = 2: first half view 1), or a list of such tensors, one per view size
    (:func:`~simclr.augment.make_views`); V is the number of views ``augment.views`` makes.
    The encoder runs once per size (BatchNorm statistics per size group), the head once.

    The returned (logged) loss is the per-view mean NT-Xent: two views and no labels
    :func:`nt_xent`, ln(2N - 1) at random init; otherwise :func:`multi_nt_xent` (every other
    view of the image, or with ``labels`` of its class, a positive), equal to it for V = 2.
    The optimizer minimizes ``loss.scale`` times it (2 = the tf reference's ``mean(loss_a +
    loss_b)``, which under LARS halves the relative weight decay and doubles the BN/bias step).
    Under DDP ``gather`` is ``dist.gather_with_grad``: the loss uses every rank's negatives.
    """
    with autocast(device, precision):
        _, z = model(views)  # VB x proj_dim
    n_views = sum(int(group[0]) for group in cfg.augment.views)
    if n_views == 2 and labels is None:
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, cfg.loss.temperature, rank=rank, gather=gather)
    else:
        loss = multi_nt_xent(z, n_views, cfg.loss.temperature, rank, gather, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss * cfg.loss.scale if cfg.loss.scale != 1 else loss).backward()
    if cfg.optim.clip_grad_norm > 0:
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def pretrain(cfg: C.Config, run_dir: str | Path | None = None, force: bool = False,
             log=print, encoder: torch.nn.Module | None = None) -> Path:
    """Pretrain a SimCLR model; resume automatically when ``run_dir`` holds a checkpoint.

    Writes into ``run_dir``: ``config.yaml`` (resolved), ``metrics.jsonl``, ``checkpoint.pt``
    every epoch (and every ``train.checkpoint_every`` steps), and at the end
    ``encoder.safetensors`` and ``loss_history.npy``. One process at a time per run dir.
    Under torchrun every rank calls this; rank 0 alone writes.

    Args:
        encoder: train this module (B x C x H x W floats -> B x D; D is found by one forward
            pass) instead of building ``model.arch``, which becomes ``custom`` (and the keys
            of our ResNets alone, ``models.RESNET_ONLY``, their defaults). Its weights are used
            as given and trained in place; to resume, pass the same kind of module again.

    Returns:
        The run directory.
    """
    if encoder is not None:  # our ResNet's own keys do not describe it: back to defaults
        cfg.model.arch = CUSTOM
        for key, default in RESNET_ONLY.items():
            setattr(cfg.model, key, default)
    elif cfg.model.arch == CUSTOM:
        raise SimCLRError("model.arch=custom trains a module given to the Python API: "
                          "simclr.pretrain(cfg, run_dir, encoder=module); or choose another "
                          "model.arch")
    C.validate(cfg)
    device = resolve_device(cfg.train.device)
    joined = not dist.is_dist() and dist.init(device.type)
    try:
        if dist.world_size() > 1 and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank())
        run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
        if dist.world_size() > 1:
            shared = [str(run_dir)]
            torch.distributed.broadcast_object_list(shared)  # rank 0's default name for all
            run_dir = Path(shared[0])
        if dist.is_main():
            check_writable(run_dir)
        else:
            log = _quiet
        precision = resolve_precision(cfg.train.precision, device)
        if precision == "fp16" and device.type != "cuda":
            raise SimCLRError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 here")
        if dist.world_size() == 1 and (message := cpu_contention(device)):
            warnings.warn(message, stacklevel=2)
        stream = use_stream(cfg.data, device)
        if stream:  # the files, decoded batch by batch in DataLoader workers
            images = StreamLoader.from_folder(
                cfg.data.root, cfg.data.split, cfg.data.image_size, cfg.train.batch_size,
                cfg.train.seed, cfg.data.subset, rank=dist.rank(), world_size=dist.world_size(),
                device=device)
        else:
            images, labels = load_train(cfg.data)  # uint8 N x C x H x W on the CPU
            if cfg.train.batch_size > images.shape[0]:
                raise SimCLRError(f"train.batch_size {cfg.train.batch_size} is larger than the "
                                  f"dataset ({images.shape[0]} images); lower it or use more "
                                  "data")
        labels = _supervised_labels(cfg, images.labels if stream else labels)
        channels, side = images.shape[0 if stream else 1], images.shape[-1]  # C x S x S
        check_encoder(cfg.model, channels, side, encoder)  # before any file is written
        if cfg.augment.mean is None or cfg.augment.std is None:  # streamed: one decoding pass
            cfg.augment.mean, cfg.augment.std = channel_stats(images.chunks() if stream
                                                              else images)
        if cfg.train.tensorboard:
            tboard.check_available()
        lock = run_lock(run_dir) if dist.is_main() else contextlib.nullcontext()
        with lock:
            return _pretrain(cfg, run_dir, force, log, images, device, precision, labels,
                             encoder)
    finally:
        if joined:
            dist.shutdown()


def _supervised_labels(cfg: C.Config, labels: torch.Tensor) -> torch.Tensor | None:
    """The training labels when ``loss.supervised`` (all must be labeled), else None."""
    if not cfg.loss.supervised:
        return None
    if bool((labels < 0).any()):
        raise SimCLRError(f"loss.supervised=true takes positives from labels, but "
                          f"{int((labels < 0).sum())} training images of {cfg.data.name} "
                          f"({cfg.data.split}) are unlabeled; use a labeled split or "
                          "loss.supervised=false")
    return labels


def _quiet(*_args, **_kwargs) -> None:
    pass


def use_stream(data: C.Data, device: torch.device) -> bool:
    """Whether training streams the image folder: data.stream, or (auto) when it is too big."""
    if data.name != "folder" or data.stream == "off" or data.root is None:
        return False
    if data.stream == "on":
        return True
    files, _, _ = list_folder(data.root, data.split, probe=False)
    n = min(len(files), data.subset) if data.subset else len(files)
    return not fits_in_memory(n, data.image_size, 3, device)


def _pretrain(cfg: C.Config, run_dir: Path, force: bool, log,
              images: torch.Tensor | StreamLoader, device: torch.device, precision: str,
              labels: torch.Tensor | None = None,
              encoder: torch.nn.Module | None = None) -> Path:
    rank, world, main = dist.rank(), dist.world_size(), dist.is_main()
    if isinstance(images, StreamLoader):
        loader, n, (in_channels, image_size, _) = images, len(images.files), images.shape
    else:
        n, in_channels, image_size = images.shape[0], images.shape[1], images.shape[-1]
        loader = TensorLoader(images.to(device), cfg.train.batch_size, cfg.train.seed, rank,
                              world)
    ckpt_path = run_dir / CHECKPOINT
    state = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if state is not None:
        _check_resume(state["config"], cfg, force, run_dir)

    torch.manual_seed(cfg.train.seed)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = build_model(cfg.model, in_channels, image_size, encoder).to(
        device, memory_format=memory_format)
    if world > 1 and cfg.model.sync_bn:
        model = dist.convert_batchnorm(model)
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    steps_per_epoch = len(loader)
    total_steps, warmup_steps = step_counts(n, cfg.train.batch_size, cfg.train.epochs,
                                            cfg.optim.warmup_epochs, cfg.train.step_rule)
    epochs = math.ceil(total_steps / steps_per_epoch)  # > train.epochs under step_rule=reference
    peak_lr = scaled_lr(cfg.optim.lr, cfg.train.batch_size, cfg.optim.lr_scaling)
    step, elapsed, history, epoch_sum = 0, 0.0, [], 0.0  # epoch_sum: this epoch's summed loss
    if state is not None:
        load_model_state(model, state["model"], ckpt_path)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, elapsed = state["step"], state["elapsed"]
        history, epoch_sum = list(state["loss_history"]), state["epoch_loss_sum"]
        if main:
            trim_metrics(run_dir / METRICS, step)
    if main:
        C.save_yaml(cfg, run_dir / "config.yaml")
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    gather = dist.gather_with_grad if world > 1 else None
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64
    epoch_loss = torch.tensor(epoch_sum, dtype=acc_dtype, device=device)  # summed step by step
    window_loss = torch.zeros((), dtype=acc_dtype, device=device)
    lr = lr_at(step, peak_lr, warmup_steps, total_steps)
    tb = tboard.TensorBoard(run_dir) if cfg.train.tensorboard and main else None

    def record(rec: dict) -> None:
        append_metrics(run_dir / METRICS, rec)
        if tb is not None:
            tb.record(rec)

    every, monitor = monitor_every(cfg), None
    if every and main:
        try:
            monitor = eval_data(monitor_config(cfg))  # labeled bank + test, uint8 on the CPU
        except SimCLRError as e:
            log(f"kNN monitor off: {e}")
    dist.wait_for_main()  # rank 0 alone loaded the monitor's images

    def guard_finite() -> None:
        """Stop (every rank) before a non-finite loss reaches a checkpoint or the log."""
        total = float(dist.reduce_mean(epoch_loss + window_loss))
        if not math.isfinite(total):
            raise SimCLRError(
                f"loss became {total} by step {step} (lr {lr:.4g}); the last good checkpoint "
                f"in {run_dir} is kept; lower optim.lr, or use train.precision=bf16/fp32 if "
                "fp16 overflowed")

    def checkpoint(unlogged: float = 0.0) -> None:
        """Save the state; ``unlogged``: training seconds since the last log window."""
        guard_finite()
        epoch_total = float(dist.reduce_mean(epoch_loss))
        if main:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "step": step, "epoch": step // steps_per_epoch,
                "elapsed": elapsed + unlogged, "loss_history": history,
                "epoch_loss_sum": epoch_total,
                "config": cfg.to_dict(), "rng": rng_state()})
        dist.wait_for_main()  # the others wait for the write without a collective's timeout

    for message in C.advice(cfg) if main else []:  # after every check that can refuse the run
        warnings.warn(message, stacklevel=3)
    streamed = f" streamed by {loader.workers} workers" if isinstance(loader, StreamLoader) else ""
    log(f"simclr: {cfg.data.name} {n} images {in_channels}x{image_size}x{image_size}{streamed}, "
        f"{cfg.model.arch} x{cfg.model.width} on {device} ({precision})"
        + (f" x {world} processes" if world > 1 else "") + f", {allocator.describe()}, "
        f"batch {cfg.train.batch_size}, "
        f"{epochs} epochs of {steps_per_epoch} steps ({total_steps} steps) -> {run_dir}"
        + (f" (resuming at step {step})" if step else ""))
    stop = min(total_steps, cfg.train.max_steps or total_steps)
    model.train()
    while step < stop:
        epoch = step // steps_per_epoch
        first = step - epoch * steps_per_epoch
        bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not (cfg.train.progress and main), leave=False,
                   dynamic_ncols=True, file=sys.stderr)
        window_steps, t0 = 0, time.perf_counter()
        batches = loader.batches(epoch, first)
        ys = batch_labels(loader, labels, epoch, first) if labels is not None else None
        with bar:  # closed on an interrupt too: the bar clears its line before any message
            for x in batches:
                lr = lr_at(step, peak_lr, warmup_steps, total_steps)
                set_lr(optimizer, lr)
                views = [v.contiguous(memory_format=memory_format) for v in make_views(
                    x, cfg.augment, cfg.augment.mean, cfg.augment.std,
                    step_generator(cfg.train.seed, step, stream=rank))]  # one per size
                b = x.shape[0]
                if tb is not None and step % steps_per_epoch == 0 and len(views[0]) >= 2 * b:
                    tb.views(views[0][:b], views[0][b:2 * b], cfg.augment.mean,
                             cfg.augment.std, step)
                loss = train_step(train_model, optimizer, scaler,
                                  views[0] if len(views) == 1 else views, cfg, device,
                                  precision, rank, gather, next(ys) if ys is not None else None)
                step, window_steps = step + 1, window_steps + 1
                window_loss += loss
                epoch_loss += loss
                bar.update(1)
                if step % cfg.train.log_every == 0 or step % steps_per_epoch == 0 or step >= stop:
                    guard_finite()
                    dt = time.perf_counter() - t0
                    elapsed += dt
                    mean_loss = float(dist.reduce_mean(window_loss)) / window_steps
                    speed = window_steps * cfg.train.batch_size / dt
                    if main:
                        record({
                            "kind": "window", "epoch": epoch + 1, "step": step,
                            "loss": mean_loss, "lr": lr, "images_per_s": speed,
                            "time": elapsed})
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}",
                                    img_s=f"{speed:.0f}")
                    window_loss.zero_()
                    window_steps, t0 = 0, time.perf_counter()
                if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 \
                        and step % steps_per_epoch and step < stop:
                    checkpoint(time.perf_counter() - t0)  # mid-epoch; the epoch end's is below
                if step >= stop:
                    break
        if step % steps_per_epoch == 0 or step == total_steps:  # the last may be partial
            done = step - epoch * steps_per_epoch  # steps of this epoch
            history.append(float(dist.reduce_mean(epoch_loss)) / done)
            epoch_loss.zero_()
            knn = ""
            if monitor is not None and ((epoch + 1) % every == 0 or step == total_steps):
                t = time.perf_counter()
                top1 = knn_monitor(model.encoder, monitor, cfg, device, precision)
                model.train()
                record({
                    "kind": "knn", "epoch": epoch + 1, "step": step, "knn_top1": top1,
                    "k": cfg.eval.knn_k, "n_train": len(monitor["train"][1]),
                    "n_test": len(monitor["test"][1]), "seconds": time.perf_counter() - t,
                    "time": elapsed})
                knn = f" kNN top1 {100 * top1:.2f}%"
            if main:
                record({
                    "kind": "epoch", "epoch": epoch + 1, "step": step, "loss": history[-1],
                    "lr": lr, "time": elapsed})
            log(f"epoch {epoch + 1}/{epochs} loss {history[-1]:.4f} lr {lr:.4g} "
                f"time {elapsed:.0f}s{knn}")
        dist.wait_for_main()  # for rank 0's kNN monitor, before checkpoint()'s collectives
        checkpoint()

    if tb is not None:
        tb.close()
    if main:
        meta = encoder_meta(cfg, in_channels, image_size, step // steps_per_epoch, step, model)
        export_encoder(run_dir / ENCODER, model.encoder, meta)
        np.save(run_dir / "loss_history.npy", np.asarray(history, dtype=np.float64))
    if step >= total_steps:
        log(f"done: {run_dir / ENCODER}")
    else:
        log(f"stopped at step {step} of {total_steps} (train.max_steps={cfg.train.max_steps}); "
            "to go on, run the same command with a larger --train.max_steps (0 = no limit)")
    return run_dir
