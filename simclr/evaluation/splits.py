"""The labeled data evaluation uses: seeded stratified splits, the train/test images of a run's
dataset (or the 80/20 protocol's split of its train split), and the smaller bank of the online
kNN monitor."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from simclr.config import Config
from simclr.data.datasets import load_split
from simclr.errors import SimCLRError


def stratified_split(labels: Tensor, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Seeded per-class split of row indices: ``(rest, held)``, ``held`` has
    ``round(fraction * n_c)`` rows of each class c (at most n_c - 1, so every class keeps one
    row in ``rest``). Both index tensors are sorted; together they are a partition of 0..N-1.
    """
    if not 0.0 < fraction < 1.0:
        raise SimCLRError(f"held-out fraction must be in (0, 1), got {fraction}; e.g. 0.1")
    labels = labels.cpu().long()
    n = labels.shape[0]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    order = perm[torch.sort(labels[perm], stable=True).indices]  # grouped by class, shuffled
    sorted_labels = labels[order]
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[sorted_labels]  # position within its class group
    n_held = torch.round(fraction * counts.double()).long().clamp(max=(counts - 1).clamp(min=0))
    is_held = rank < n_held[sorted_labels]
    return order[~is_held].sort().values, order[is_held].sort().values


def eval_data(cfg: Config) -> dict[str, tuple[Tensor, Tensor]]:
    """Labeled train and test images of the run's dataset (uint8 N x C x H x W, int64 labels).

    With ``probe.split > 0`` the labeled train split is divided (stratified) into train/test and
    the official test split is not used.
    """
    name = cfg.data.name
    args = dict(root=cfg.data.root, download=cfg.data.download, image_size=cfg.data.image_size)
    train = load_split(name, "train", **args)
    if bool((train[1] < 0).any()):
        raise SimCLRError(f"the {name} train split has unlabeled images; evaluation needs "
                          "labels (use a folder with one subfolder per class)")
    if cfg.eval.subset:
        train = (train[0][: cfg.eval.subset], train[1][: cfg.eval.subset])
    if cfg.probe.split > 0:
        idx_train, idx_test = stratified_split(train[1], 1.0 - cfg.probe.split, cfg.train.seed)
        test = (train[0][idx_test], train[1][idx_test])
        train = (train[0][idx_train], train[1][idx_train])
    else:
        try:
            test = load_split(name, "test", **args)
        except SimCLRError as e:
            if name != "folder":
                raise
            raise SimCLRError(f"{e}; or use --probe.split=0.8 to hold out 20% of the labeled "
                              "train split as test") from None
    if cfg.eval.test_subset:
        test = (test[0][: cfg.eval.test_subset], test[1][: cfg.eval.test_subset])
    return {"train": train, "test": test}


def monitor_config(cfg: Config) -> Config:
    """``cfg`` for the online kNN monitor and the neighbour bank: with ``data.subset = N`` an
    unset (0) ``eval.subset`` / ``eval.test_subset`` becomes N, so a run on N images is judged
    on a bank of those N and at most N test images (``simclr eval`` keeps the full splits)."""
    if not cfg.data.subset:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.eval.subset = cfg.eval.subset or cfg.data.subset
    cfg.eval.test_subset = cfg.eval.test_subset or cfg.data.subset
    return cfg


__all__ = ["eval_data", "monitor_config", "stratified_split"]
