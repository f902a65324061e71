"""Evaluate a run's encoder: ``evaluate`` (features, protocols, baselines, ``eval.json``). The
protocol math lives in :mod:`simclr.evaluation.protocols` and
:mod:`simclr.evaluation.clustering`."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from simclr import config as C
from simclr.errors import SimCLRError
from simclr.evaluation.cache import features, model_digest
from simclr.evaluation.clustering import clustering_metrics
from simclr.evaluation.encoder import (
    NormalizedEncoder,
    encoder_path,
    load_encoder,
    random_encoder_like,
)
from simclr.evaluation.features import pixel_features
from simclr.evaluation.protocols import knn_accuracy, linear_probe, linear_sgd
from simclr.evaluation.results import (
    EVAL_JSON,
    PROTOCOLS,
    read_eval,
    result_inputs,
    write_eval,
)
from simclr.evaluation.splits import eval_data


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


def _eval_config(run_dir: Path | None, enc: NormalizedEncoder,
                 overrides: list[str] | None) -> C.Config:
    """The run's saved config, or (an encoder file alone) the dataset and image size the file
    records; overrides win either way."""
    if run_dir is not None:
        cfg_path = Path(run_dir) / "config.yaml"
        if not cfg_path.exists():
            raise SimCLRError(f"{cfg_path} not found; is {run_dir} a simclr run dir?")
        base = C.load_yaml(cfg_path)
    else:
        base = {"data": {k: enc.meta[m] for k, m in (("name", "dataset"),
                                                      ("image_size", "image_size"))
                         if m in enc.meta}}
    return C.build_config(overrides=overrides or [], base=base)


def evaluate(run_dir: str | Path | None = None, protocols: list[str] | tuple = ("linear", "knn",
             "kmeans"), overrides: list[str] | None = None, encoder_file: str | Path | None = None,
             write: bool = True, log=print, encoder: nn.Module | None = None) -> dict[str, Any]:
    """Run the evaluation protocols on a run's encoder (and the baselines); add the results
    to eval.json, where each replaces only an older result of its own key (model and its
    state, protocol, settings; see :mod:`simclr.evaluation.results`).

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
    from simclr.runtime.compute import resolve_device, resolve_precision

    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise SimCLRError(f"unknown protocol '{unknown[0]}'; choose from {', '.join(PROTOCOLS)}")
    if run_dir is None and encoder_file is None:
        raise SimCLRError("give a run dir or --encoder FILE.safetensors")
    if run_dir is not None and not (Path(run_dir) / "config.yaml").exists():
        raise SimCLRError(f"{Path(run_dir) / 'config.yaml'} not found; is {run_dir} a simclr "
                          "run dir?")
    source = encoder_path(encoder_file or run_dir)
    fresh = copy.deepcopy(encoder) if encoder is not None else None
    enc = load_encoder(source, encoder)
    cfg = _eval_config(run_dir, enc, overrides)
    out_dir = Path(run_dir) if run_dir is not None else source.parent
    if write:
        read_eval(out_dir / EVAL_JSON)  # a broken one fails now, not after the work
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    data = eval_data(cfg)
    if data["train"][0].shape[1:] != (enc.meta["in_channels"], enc.meta["image_size"],
                                      enc.meta["image_size"]):
        raise SimCLRError(f"the encoder was trained on {enc.meta['in_channels']}x"
                          f"{enc.meta['image_size']} px images but the eval data is "
                          f"{tuple(data['train'][0].shape[1:])}; set data.* to match the run")
    feat_protocols = [p for p in protocols if p != "finetune"]
    models: list[tuple[str, Any]] = [("simclr", enc)]
    if cfg.eval.baselines:
        models += [("random_init", random_encoder_like(enc, cfg.train.seed, fresh)),
                   ("raw_pixels", None)]
    digests = {name: model_digest(m) if m is not None else None for name, m in models}

    def result(name: str, model, row: dict) -> dict:
        epoch = model.meta.get("epoch") if model is not None else 0
        return {"model": name, "model_sha256": digests[name], "epoch": epoch, **row,
                "inputs": result_inputs(cfg, row["protocol"], precision, device.type)}

    results = []
    for name, model in models:
        t = time.perf_counter()
        if model is None:
            feats = {k: pixel_features(v[0]) for k, v in data.items()}
        else:
            feats = features(model, data, cfg, device, precision, out_dir / "features")
        log(f"{name}: features {tuple(feats['train'].shape)} in {time.perf_counter() - t:.1f}s")
        results += [result(name, model, row)
                    for row in run_protocols(feats, data, feat_protocols, cfg)]
    if "finetune" in protocols:
        from simclr.evaluation.finetune import finetune
        for name, model in models:
            if model is not None:
                results.append(result(name, model,
                                      finetune(model, data, cfg, device, precision, log=log)))
    report = {"run_dir": str(run_dir) if run_dir is not None else None, "encoder": str(source),
              "dataset": cfg.data.name, "epoch": enc.meta.get("epoch"),
              "step": enc.meta.get("step"), "feature_dim": enc.feature_dim,
              "protocols": list(protocols), "results": results}
    if write:
        write_eval(out_dir / EVAL_JSON, report)
    return report

