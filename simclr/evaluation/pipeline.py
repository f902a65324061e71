"""The one evaluation pipeline: a model's frozen features (cached when asked) -> the feature
protocols, then fine-tuning. `evaluate_encoder` runs it on any module;
`evaluate` loads a run's encoder (`load_encoder`), runs
the same pipeline on it and on its baselines, and adds the results to the run's ``eval.json``.
The protocol math lives in `simclr.evaluation.protocols` and
`simclr.evaluation.clustering`."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from simclr import config as C
from simclr.errors import SimCLRError
from simclr.evaluation.cache import features, model_digest
from simclr.evaluation.clustering import clustering_metrics
from simclr.evaluation.encoder import NormalizedEncoder, load_encoder, random_encoder_like
from simclr.evaluation.features import check_images, pixel_features
from simclr.evaluation.protocols import knn_accuracy, linear_probe, linear_sgd
from simclr.evaluation.results import PROTOCOLS, read_eval, result_inputs, write_eval
from simclr.evaluation.splits import eval_data
from simclr.models.factory import encoder_dim
from simclr.runtime.compute import resolve_device, resolve_precision
from simclr.train.rundir import RunDir
from simclr.train.rundir import encoder_file as find_encoder_file


def check_protocols(protocols: Sequence[str]) -> None:
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise SimCLRError(f"unknown protocol '{unknown[0]}'; choose from {', '.join(PROTOCOLS)}")


def run_protocols(feats: dict[str, Tensor], data: dict, protocols: list[str],
                  cfg: C.Config) -> list[dict[str, Any]]:
    """Linear / kNN / k-means results on features, each carrying its protocol and settings."""
    (_, ytr), (_, yte) = data["train"], data["test"]
    xtr, xte = feats["train"], feats["test"]
    sizes = {"n_train": len(ytr), "n_test": len(yte), "feature_dim": int(xtr.shape[1])}
    rows = []
    if "linear" in protocols:
        t = time.perf_counter()
        r = linear_probe(xtr, ytr, xte, yte, cfg.probe.val_fraction, seed=cfg.train.seed)
        rows.append({"protocol": "linear", "split": "test", "top1": r["top1"], "top5": r["top5"],
                     **sizes, "n_val": r["n_val"], "seconds": time.perf_counter() - t,
                     "settings": {"classifier": "multinomial logistic regression (L-BFGS) on "
                                  "standardized frozen features", "weight_decay": r["weight_decay"],
                                  "chosen_on": f"stratified {cfg.probe.val_fraction:g} of train",
                                  "val_top1": r["val_top1"], "grid": r["grid"]}})
    if "linear_sgd" in protocols:
        t, p = time.perf_counter(), cfg.probe
        r = linear_sgd(xtr, ytr, xte, yte, p.sgd_epochs, p.sgd_batch_size, p.sgd_lr,
                       seed=cfg.train.seed)
        rows.append({"protocol": "linear_sgd", "split": "test", "top1": r["top1"],
                     "top5": r["top5"], **sizes, "seconds": time.perf_counter() - t,
                     "settings": {"classifier": "linear layer, zero init, on frozen features "
                                  "(the tf reference's linear eval)", "optimizer": "SGD, "
                                  "Nesterov momentum 0.9, cosine, no warmup, no weight decay",
                                  "epochs": p.sgd_epochs, "batch_size": p.sgd_batch_size,
                                  "lr": p.sgd_lr, "peak_lr": r["peak_lr"], "steps": r["steps"],
                                  "augmentation": "none (features extracted once)"}})
    if "knn" in protocols:
        t = time.perf_counter()
        top1 = knn_accuracy(xtr, ytr, xte, yte, k=cfg.eval.knn_k,
                            temperature=cfg.eval.knn_temperature)
        rows.append({"protocol": "knn", "split": "test", "top1": top1, **sizes,
                     "seconds": time.perf_counter() - t,
                     "settings": {"k": cfg.eval.knn_k, "temperature": cfg.eval.knn_temperature,
                                  "similarity": "cosine", "bank": "train features"}})
    if "kmeans" in protocols:
        t = time.perf_counter()
        r = clustering_metrics(xte, yte, n_init=cfg.eval.kmeans_init, seed=cfg.train.seed)
        rows.append({"protocol": "kmeans", "split": "test", "nmi": r["nmi"], "ari": r["ari"],
                     "accuracy": r["accuracy"], **sizes, "seconds": time.perf_counter() - t,
                     "settings": {"k": r["k"], "n_init": cfg.eval.kmeans_init,
                                  "features": "L2-normalized", "accuracy": "Hungarian matching"}})
    return rows


def evaluate_models(models: list[tuple[str, NormalizedEncoder | None]], data: dict,
                    protocols: Sequence[str], cfg: C.Config, device: torch.device,
                    precision: str, cache_dir: Path | None = None,
                    log=print) -> list[tuple[str, NormalizedEncoder | None, dict[str, Any]]]:
    """The pipeline: each model's features of ``data`` (a model of None: the raw pixels),
    cached in ``cache_dir`` when given, through the feature protocols; then, with
    ``finetune``, each encoder fine-tuned. Returns ``(name, model, row)`` per result, in that
    order."""
    rows = []
    for name, model in models:
        t = time.perf_counter()
        if model is None:
            feats = {k: pixel_features(v[0]) for k, v in data.items()}
        else:
            feats = features(model, data, cfg, device, precision, cache_dir)
        log(f"{name + ': ' if name else ''}features {tuple(feats['train'].shape)} in "
            f"{time.perf_counter() - t:.1f}s")
        rows += [(name, model, row) for row in run_protocols(
            feats, data, [p for p in protocols if p != "finetune"], cfg)]
    if "finetune" in protocols:
        from simclr.evaluation.finetune import finetune
        rows += [(name, model, finetune(model, data, cfg, device, precision, log=log))
                 for name, model in models if model is not None]
    return rows


def _check_data(data: Any) -> dict[str, tuple[Tensor, Tensor]]:
    """``{"train": (images, labels), "test": (images, labels)}`` with one image shape and
    integer labels, one per image; images as
    `check_images` wants."""
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
        data: a `Config` (its ``data`` section names the dataset, its
            ``eval``/``probe``/``finetune`` sections the settings), a ``Data`` section, or
            ``{"train": (images, labels), "test": (images, labels)}`` with images N x C x H x W
            uint8 (divided by 255) or float in [0, 1] (anything else is refused).
        protocols: any of linear, linear_sgd, knn, kmeans, finetune.
        cfg: the settings when ``data`` is not a Config (default: the defaults).
        mean, std: per-channel normalization of the [0, 1] images, applied before the encoder.

    Returns:
        ``{"dataset", "feature_dim", "protocols", "results": [one row per protocol]}``.
    """
    check_protocols(protocols)
    if isinstance(data, C.Config):
        cfg = data
    elif isinstance(data, C.Data):
        cfg = C.Config(data=data)
    cfg = copy.deepcopy(cfg) if cfg is not None else C.Config()
    C.validate(cfg)
    tensors = eval_data(cfg) if isinstance(data, (C.Config, C.Data)) else _check_data(data)
    c, h, w = tensors["train"][0].shape[1:]
    mean = [0.0] * c if mean is None else list(mean)
    std = [1.0] * c if std is None else list(std)
    dim = encoder_dim(encoder, c, (h, w))  # an encoder that cannot run fails here, in one line
    enc = NormalizedEncoder(encoder, mean, std, {"image_size": h}, dim)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    rows = evaluate_models([("", enc)], tensors, protocols, cfg, device, precision, log=log)
    name = cfg.data.name if isinstance(data, (C.Config, C.Data)) else "tensors"
    return {"dataset": name, "feature_dim": dim, "protocols": list(protocols),
            "results": [row for *_, row in rows]}


def _eval_config(run: RunDir | None, enc: NormalizedEncoder,
                 overrides: list[str] | None) -> C.Config:
    """The run's saved config, or (an encoder file alone) the dataset and image size the file
    records; overrides win either way."""
    if run is not None:
        return run.load_config(overrides)
    base = {"data": {k: enc.meta[m] for k, m in (("name", "dataset"),
                                                  ("image_size", "image_size"))
                     if m in enc.meta}}
    return C.build_config(overrides=overrides or [], base=base)


def evaluate(run_dir: str | Path | None = None, protocols: list[str] | tuple = ("linear", "knn",
             "kmeans"), overrides: list[str] | None = None, encoder_file: str | Path | None = None,
             write: bool = True, log=print, encoder: nn.Module | None = None) -> dict[str, Any]:
    """Run the evaluation protocols on a run's encoder (and the baselines); add the results
    to eval.json, where each replaces only an older result of its own key (model and its
    state, protocol, settings; see `simclr.evaluation.results`).

    Args:
        run_dir: a pretraining run dir (its config.yaml gives the dataset and model).
        protocols: any of linear, linear_sgd, knn, kmeans, finetune.
        overrides: ``section.key=value`` strings (eval.*, probe.*, finetune.*, data.root, ...).
        encoder_file: evaluate this encoder.safetensors instead of the run's; without a run
            dir, the dataset and image size are those the file records.
        encoder: for a custom encoder: a fresh module of its kind; the run's weights are
            loaded into it, and an untouched copy of it is the random-init baseline.

    Returns:
        This call's report: its ``results`` are this call's (eval.json holds all).
    """
    check_protocols(protocols)
    if run_dir is None and encoder_file is None:
        raise SimCLRError("give a run dir or --encoder FILE.safetensors")
    run = RunDir(run_dir) if run_dir is not None else None
    if run is not None:
        run.saved_config()  # not a run dir: the one error, before any work
    source = find_encoder_file(encoder_file or run_dir)
    fresh = copy.deepcopy(encoder) if encoder is not None else None
    enc = load_encoder(source, encoder)
    cfg = _eval_config(run, enc, overrides)
    out = run if run is not None else RunDir(source.parent)
    if write:
        read_eval(out.eval_json)  # a broken one fails now, not after the work
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    data = eval_data(cfg)
    if data["train"][0].shape[1:] != (enc.meta["in_channels"], enc.meta["image_size"],
                                      enc.meta["image_size"]):
        raise SimCLRError(f"the encoder was trained on {enc.meta['in_channels']}x"
                          f"{enc.meta['image_size']} px images but the eval data is "
                          f"{tuple(data['train'][0].shape[1:])}; set data.* to match the run")
    models: list[tuple[str, Any]] = [("simclr", enc)]
    if cfg.eval.baselines:
        models += [("random_init", random_encoder_like(enc, cfg.train.seed, fresh)),
                   ("raw_pixels", None)]
    digests = {name: model_digest(m) if m is not None else None for name, m in models}
    results = [{"model": name, "model_sha256": digests[name],
                "epoch": model.meta.get("epoch") if model is not None else 0, **row,
                "inputs": result_inputs(cfg, row["protocol"], precision, device.type)}
               for name, model, row in evaluate_models(models, data, protocols, cfg, device,
                                                       precision, out.features, log)]
    report = {"run_dir": str(run_dir) if run_dir is not None else None, "encoder": str(source),
              "dataset": cfg.data.name, "epoch": enc.meta.get("epoch"),
              "step": enc.meta.get("step"), "feature_dim": enc.feature_dim,
              "protocols": list(protocols), "results": results}
    if write:
        write_eval(out.eval_json, report)
    return report


__all__ = ["evaluate", "evaluate_encoder", "evaluate_models", "run_protocols"]
