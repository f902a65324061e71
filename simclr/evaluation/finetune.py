"""Fine-tuning with few labels: the encoder is trained too, so the result is reported as
``finetune``, never as linear evaluation.

It runs on pretraining's machinery: the loader and its batch labels
(`simclr.data.loader`), the views (`simclr_augment`, crop + flip),
the lr schedule and parameter groups (`simclr.train.optim`), autocast and the optimizer
step with its GradScaler (`optimizer_step`). What it does not share is
pretraining's loop (`simclr.train.loop.train`), which is a run's: metrics, checkpoints,
resume, the kNN monitor, processes. A fine-tune is a few epochs in memory inside ``simclr eval``,
so its loop is the 10 lines of `train_classifier`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr import config as C
from simclr.augment.ops import simclr_augment
from simclr.data.loader import TensorLoader, batch_labels
from simclr.evaluation.features import extract_features
from simclr.evaluation.splits import stratified_split
from simclr.runtime.compute import autocast
from simclr.train.optim import lr_at, param_groups, scaled_lr, set_lr
from simclr.train.step import optimizer_step


def label_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices of a stratified ``fraction`` of the rows (all rows when fraction is 1)."""
    if fraction >= 1:
        return torch.arange(labels.numel())
    return stratified_split(labels, fraction, seed)[1]


def finetune_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, views: Tensor, labels: Tensor,
                  device: torch.device, precision: str) -> Tensor:
    """One supervised step on ``views`` (B x C x H x W) and ``labels`` (B); returns the loss.

    Under fp16 the loss is scaled through ``scaler`` before backward, so small gradients do not
    flush to zero, and a step whose gradients overflowed is skipped instead of writing inf/NaN
    into the encoder (the scale then halves). A disabled scaler (bf16/fp32) is a plain step.
    """
    with autocast(device, precision):
        logits = model(views)  # B x classes
    loss = F.cross_entropy(logits.float(), labels)
    optimizer_step(loss, optimizer, scaler)
    return loss.detach()


def train_classifier(enc, x: Tensor, y: Tensor, classes: int, cfg: C.Config,
                     device: torch.device, precision: str) -> nn.Sequential:
    """A copy of ``enc.encoder`` plus a linear head, trained together on uint8 images ``x``
    (N x C x H x W) and labels ``y`` (N) with ``cfg.finetune``'s settings: random resized crop +
    flip, SGD with Nesterov momentum, cosine lr. Returns ``Sequential(encoder, head)`` taking
    normalized images, in train mode; ``enc`` is left as it was."""
    f = cfg.finetune
    x, y = x.to(device), y.to(device)
    torch.manual_seed(cfg.train.seed)
    encoder = copy.deepcopy(enc.encoder).to(device, memory_format=torch.channels_last).train()
    head = nn.Linear(enc.feature_dim, classes).to(device)
    model = nn.Sequential(encoder, head)
    optimizer = torch.optim.SGD(param_groups(model, f.weight_decay), lr=0.0, momentum=0.9,
                                nesterov=True)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    batch = min(f.batch_size, len(x))
    loader = TensorLoader(x, batch, cfg.train.seed)
    total = f.epochs * len(loader)
    peak = scaled_lr(f.lr, batch, "linear")
    aug = replace(cfg.augment, jitter_p=0.0, gray_p=0.0, blur_p=0.0)  # crop + flip only
    mean, std = enc.mean.flatten().tolist(), enc.std.flatten().tolist()
    g = torch.Generator().manual_seed(cfg.train.seed)  # CPU draws: the same on any device
    step = 0
    for epoch in range(f.epochs):
        for xb, yb in zip(loader.batches(epoch), batch_labels(loader, y, epoch), strict=True):
            set_lr(optimizer, lr_at(step, peak, 0, total))
            views = simclr_augment(xb, aug, mean, std, g).contiguous(
                memory_format=torch.channels_last)
            finetune_step(model, optimizer, scaler, views, yb, device, precision)
            step += 1
    return model


def finetune(enc, data: dict[str, tuple[Tensor, Tensor]], cfg: C.Config, device: torch.device,
             precision: str, log=print) -> dict[str, Any]:
    """Train a copy of ``enc.encoder`` plus a linear head on ``finetune.labels`` of the labeled
    train split (`train_classifier`), then report top-1 on the test split once.

    Args:
        enc: a `simclr.evaluation.encoder.NormalizedEncoder`.
        data: ``{"train": (uint8 images, labels), "test": (...)}``.
    """
    f = cfg.finetune
    (x_all, y_all), (x_test, y_test) = data["train"], data["test"]
    idx = label_subset(y_all, f.labels, cfg.train.seed)
    t0 = time.perf_counter()
    model = train_classifier(enc, x_all[idx], y_all[idx], int(y_all.max()) + 1, cfg, device,
                             precision)
    log(f"finetune: {len(idx)} labeled images, {f.epochs} epochs in "
        f"{time.perf_counter() - t0:.1f}s")
    encoder, head = model
    mean, std = enc.mean.flatten().tolist(), enc.std.flatten().tolist()
    feats = extract_features(encoder, x_test, mean, std, cfg.eval.batch_size, device, precision)
    with torch.no_grad():
        pred = head.float().cpu()(feats).argmax(1)
    return {"protocol": "finetune", "split": "test", "top1": float((pred == y_test).float().mean()),
            "n_train": int(len(idx)), "n_test": int(len(y_test)),
            "feature_dim": int(enc.feature_dim),
            "settings": {"labels": f.labels, "epochs": f.epochs, "lr": f.lr,
                         "weight_decay": f.weight_decay, "batch_size": min(f.batch_size, len(idx)),
                         "optimizer": "SGD nesterov momentum 0.9, cosine",
                         "augment": "random resized crop + flip", "trains_encoder": True}}
