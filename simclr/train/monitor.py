"""The online kNN monitor of pretraining: kNN top-1 of the encoder being trained, with
evaluation's pure protocol functions (not its orchestrator)."""

from __future__ import annotations

import torch
from torch import nn

from simclr.config import Config
from simclr.evaluation.features import extract_features
from simclr.evaluation.protocols import knn_accuracy


def knn_monitor(encoder: nn.Module, data: dict, cfg: Config, device: torch.device,
                precision: str) -> float:
    """kNN top-1 on the test split with the train split as bank: the online monitor."""
    mean, std = list(cfg.augment.mean), list(cfg.augment.std)
    feats = {split: extract_features(encoder, images, mean, std, cfg.eval.batch_size, device,
                                     precision) for split, (images, _) in data.items()}
    return knn_accuracy(feats["train"], data["train"][1], feats["test"], data["test"][1],
                        k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)


__all__ = ["knn_monitor"]
