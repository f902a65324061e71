"""``evaluate_encoder``: the protocols of ``simclr eval`` on any module mapping images to
features, on a configured dataset or on tensors you pass."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from simclr import config as C
from simclr.errors import SimCLRError
from simclr.evaluation.cache import features
from simclr.evaluation.encoder import NormalizedEncoder
from simclr.evaluation.features import check_images
from simclr.evaluation.pipeline import run_protocols
from simclr.evaluation.results import PROTOCOLS
from simclr.evaluation.splits import eval_data
from simclr.models.external import feature_dim


def _check_data(data: Any) -> dict[str, tuple[Tensor, Tensor]]:
    """``{"train": (images, labels), "test": (images, labels)}`` with one image shape and
    integer labels, one per image; images as
    :func:`~simclr.evaluation.features.check_images` wants."""
    if not isinstance(data, dict) or set(data) != {"train", "test"}:
        raise SimCLRError("data must be a Config, a Data section, or {'train': (images, labels), "
                          "'test': (images, labels)}")
    for split, pair in data.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise SimCLRError(f"data['{split}'] must be a pair (images, labels)")
        images, labels = pair
        check_images(images, f"{split} images")
        if labels.ndim != 1 or len(labels) != len(images) or labels.is_floating_point():
            raise SimCLRError(f"{split} labels must be {len(images)} integers (one per image), "
                              f"got {labels.dtype} of shape {tuple(labels.shape)}")
    if data["train"][0].shape[1:] != data["test"][0].shape[1:]:
        raise SimCLRError(f"train and test images differ in shape ({tuple(data['train'][0].shape)}"
                          f" vs {tuple(data['test'][0].shape)}); give both the same C x H x W")
    return {split: (images, labels) for split, (images, labels) in data.items()}


def evaluate_encoder(encoder: nn.Module, data: C.Config | C.Data | dict,
                     protocols: Sequence[str] = ("linear", "knn", "kmeans"),
                     cfg: C.Config | None = None, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, log=print) -> dict[str, Any]:
    """Evaluate any module as a frozen feature extractor with the protocols of ``simclr eval``
    (linear probe with weight decay chosen on train only, kNN, k-means; ``finetune`` trains a
    copy). Nothing is written; the rows are those of ``eval.json``.

    Args:
        encoder: a module from B x C x H x W floats to B x D (outputs with more dims are
            flattened). It is fed images in [0, 1], ``(x - mean) / std`` when those are given.
            It is moved to the device of ``train.device``.
        data: a :class:`~simclr.config.Config` (its ``data`` section names the dataset, its
            ``eval``/``probe``/``finetune`` sections the settings), a ``Data`` section, or
            ``{"train": (images, labels), "test": (images, labels)}`` with images N x C x H x W
            uint8 (divided by 255) or float in [0, 1] (anything else is refused).
        protocols: any of linear, linear_sgd, knn, kmeans, finetune.
        cfg: the settings when ``data`` is not a Config (default: the defaults).
        mean, std: per-channel normalization of the [0, 1] images, applied before the encoder.

    Returns:
        ``{"dataset", "feature_dim", "protocols", "results": [one row per protocol]}``.
    """
    from simclr.runtime.compute import resolve_device, resolve_precision

    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise SimCLRError(f"unknown protocol '{unknown[0]}'; choose from {', '.join(PROTOCOLS)}")
    if isinstance(data, C.Config):
        cfg = data
    elif isinstance(data, C.Data):
        cfg = C.Config(data=data)
    cfg = cfg if cfg is not None else C.Config()
    C.validate(cfg)
    tensors = eval_data(cfg) if isinstance(data, (C.Config, C.Data)) else _check_data(data)
    c, h, w = tensors["train"][0].shape[1:]
    mean = [0.0] * c if mean is None else list(mean)
    std = [1.0] * c if std is None else list(std)
    dim = feature_dim(encoder, c, (h, w))  # an encoder that cannot run fails here, in one line
    enc = NormalizedEncoder(encoder, mean, std, {"image_size": h}, dim)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    t = time.perf_counter()
    feats = features(enc, tensors, cfg, device, precision)
    log(f"features {tuple(feats['train'].shape)} in {time.perf_counter() - t:.1f}s")
    results = run_protocols(feats, tensors, [p for p in protocols if p != "finetune"], cfg)
    if "finetune" in protocols:
        from simclr.evaluation.finetune import finetune
        results.append(finetune(enc, tensors, cfg, device, precision, log=log))
    name = cfg.data.name if isinstance(data, (C.Config, C.Data)) else "tensors"
    return {"dataset": name, "feature_dim": int(feats["train"].shape[1]),
            "protocols": list(protocols), "results": results}


__all__ = ["evaluate_encoder"]
