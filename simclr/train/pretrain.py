"""``pretrain(cfg)``: the SimCLR training loop, with metrics, checkpoints and exact resume.

The loop (`train`) reads in one screen; what it calls is named: `build` (the
run's fixed parts and a fresh `TrainState`), `resume`, `advance` (one
step), `log_window`, `end_epoch` (history, kNN monitor, log), `save` and
`finish` (export). All randomness after model init is a pure function of the seed: the
epoch's shuffle of ``(seed, epoch)`` and the step's augmentations of ``(seed, step)``. A run
resumed from any checkpoint therefore replays exactly the batches and views an uninterrupted
run would see.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from datetime import datetime
from pathlib import Path

import torch

from simclr import config as C
from simclr.config import CUSTOM, RESNET_ONLY
from simclr.data.datasets import channel_stats, load_train
from simclr.data.folder import list_folder
from simclr.data.loader import check_batch
from simclr.data.stream import StreamLoader, fits_in_memory
from simclr.errors import SimCLRError
from simclr.models.factory import check_encoder
from simclr.runtime.compute import cpu_contention, resolve_device, resolve_precision
from simclr.train import dist
from simclr.train import tensorboard as tboard
from simclr.train.loop import train
from simclr.train.rundir import RunDir
from simclr.train.state import build, resume


def default_run_dir(cfg: C.Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.data.name}-{cfg.model.arch}-{stamp}"


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
            of our ResNets alone, ``config.RESNET_ONLY``, their defaults). Its weights are used
            as given and trained in place; to resume, pass the same kind of module again.

    Returns:
        The run directory (its ``config.yaml`` is the resolved config; ``cfg`` is left as it
        was).
    """
    cfg = copy.deepcopy(cfg)  # resolved here (arch, optimizer defaults, data statistics)
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
            RunDir(run_dir).check_writable()
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
            check_batch(images.shape[0], cfg.train.batch_size, dist.world_size())  # before files
        labels = _supervised_labels(cfg, images.labels if stream else labels)
        channels, side = images.shape[0 if stream else 1], images.shape[-1]  # C x S x S
        check_encoder(cfg.model, channels, side, encoder)  # before any file is written
        if cfg.augment.mean is None or cfg.augment.std is None:  # streamed: one decoding pass
            cfg.augment.mean, cfg.augment.std = channel_stats(images.chunks() if stream
                                                              else images)
        if cfg.train.tensorboard:
            tboard.check_available()
        lock = RunDir(run_dir).lock() if dist.is_main() else contextlib.nullcontext()
        with lock:
            run, state = build(cfg, run_dir, log, images, device, precision, labels, encoder)
            resume(run, state, force)
            return train(run, state)
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


# ---------------------------------------------------------------- what the loop calls


