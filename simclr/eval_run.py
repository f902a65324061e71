"""Evaluate a run's encoder: ``load_encoder`` and ``evaluate`` (features, protocols, baselines,
``eval.json``). The protocol math lives in :mod:`simclr.protocols` and :mod:`simclr.clustering`."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from simclr import config as C
from simclr.backbones import feature_dim
from simclr.checkpoint import ENCODER, atomic_write, load_model_state, read_encoder
from simclr.clustering import clustering_metrics
from simclr.data import load_split
from simclr.errors import SimCLRError
from simclr.models import ResNet, encoder_from_meta
from simclr.protocols import (
    extract_features,
    knn_accuracy,
    linear_probe,
    linear_sgd,
    pixel_features,
    stratified_split,
)

EVAL_JSON = "eval.json"
PROTOCOLS = ("linear", "linear_sgd", "knn", "kmeans", "finetune")


class NormalizedEncoder(nn.Module):
    """Float images in [0, 1] (N x C x H x W) -> features h; applies the run's normalization
    itself, so downstream users need no constants. ``meta`` holds what the run recorded.

    ``feature_dim``: D; default the run's record, else our ResNet's, else one forward pass
    at the recorded image size."""

    def __init__(self, encoder: nn.Module, mean, std, meta: dict[str, Any] | None = None,
                 feature_dim: int | None = None):
        super().__init__()
        self.encoder = encoder
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.meta = dict(meta or {})
        self.feature_dim = feature_dim or self.meta.get("feature_dim") or _dim(encoder,
                                                                              self.meta, c)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder((x - self.mean) / self.std)  # N x D


def _dim(encoder: nn.Module, meta: dict[str, Any], channels: int) -> int:
    if isinstance(encoder, ResNet):
        return encoder.feature_dim
    return feature_dim(encoder, channels, meta["image_size"])


def encoder_path(run_dir_or_file: str | Path) -> Path:
    path = Path(run_dir_or_file)
    if path.is_dir():
        path = path / ENCODER
        if not path.exists():
            raise SimCLRError(f"{path} not found: the run has not exported an encoder yet; run "
                              "`simclr pretrain` on it (a stopped run exports at its stop)")
    return path


def load_encoder(run_dir_or_file: str | Path,
                 encoder: nn.Module | None = None) -> NormalizedEncoder:
    """The encoder of a run dir (or an ``encoder.safetensors``) as a :class:`NormalizedEncoder`
    in eval mode.

    Our ResNets and timm / torchvision encoders (with that package installed) are rebuilt
    from the file's record. A custom module (a run of ``pretrain(cfg, encoder=module)``)
    cannot be: pass ``encoder``, a module of the same kind, and the weights are loaded into it.
    """
    path = encoder_path(run_dir_or_file)
    tensors, meta = read_encoder(path)
    encoder = encoder if encoder is not None else encoder_from_meta(meta)
    load_model_state(encoder, tensors, path)
    return NormalizedEncoder(encoder, meta["mean"], meta["std"], meta).eval()


def random_encoder_like(enc: NormalizedEncoder, seed: int,
                        module: nn.Module | None = None) -> NormalizedEncoder:
    """The same architecture, randomly initialized from ``seed``: the what-did-pretraining-add
    baseline. ``module``: an untrained module to use instead (a custom encoder, which cannot
    be rebuilt from its record, is its own fresh module)."""
    torch.manual_seed(seed)
    m = enc.meta
    encoder = module if module is not None else encoder_from_meta(m)
    return NormalizedEncoder(encoder, m["mean"], m["std"], {**m, "epoch": 0},
                             enc.feature_dim).eval()


def eval_data(cfg: C.Config) -> dict[str, tuple[Tensor, Tensor]]:
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


def _cache_key(path: Path | None, cfg: C.Config, split: str, n: int) -> str:
    h = hashlib.sha256()
    if path is not None:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    h.update(json.dumps([cfg.data.name, cfg.data.image_size, cfg.eval.subset,
                         cfg.eval.test_subset, cfg.probe.split, split, n]).encode())
    return h.hexdigest()[:20]


def features(enc: NormalizedEncoder, data: dict, cfg: C.Config, device: torch.device,
             precision: str, cache_dir: Path | None = None,
             source: Path | None = None) -> dict[str, Tensor]:
    """Train/test features of the frozen encoder, cached in ``cache_dir`` per encoder file."""
    out = {}
    for split, (images, _) in data.items():
        cache = None
        if cache_dir is not None and source is not None:
            cache = cache_dir / f"{_cache_key(source, cfg, split, len(images))}.safetensors"
            if cache.exists():
                out[split] = load_file(str(cache))["features"]
                continue
        enc = enc.to(device, memory_format=torch.channels_last)  # as during training
        out[split] = extract_features(enc.encoder, images, enc.mean.flatten().tolist(),
                                      enc.std.flatten().tolist(), cfg.eval.batch_size, device,
                                      precision)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache, lambda tmp, f=out[split]: save_file({"features": f}, str(tmp)))
    return out


def knn_monitor(encoder: nn.Module, data: dict, cfg: C.Config, device: torch.device,
                precision: str) -> float:
    """kNN top-1 on the test split with the train split as bank: the online monitor."""
    mean, std = list(cfg.augment.mean), list(cfg.augment.std)
    feats = {split: extract_features(encoder, images, mean, std, cfg.eval.batch_size, device,
                                     precision) for split, (images, _) in data.items()}
    return knn_accuracy(feats["train"], data["train"][1], feats["test"], data["test"][1],
                        k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)


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


def evaluate(run_dir: str | Path | None = None, protocols: list[str] | tuple = ("linear", "knn",
             "kmeans"), overrides: list[str] | None = None, encoder_file: str | Path | None = None,
             write: bool = True, log=print, encoder: nn.Module | None = None) -> dict[str, Any]:
    """Run the evaluation protocols on a run's encoder (and the baselines) and write eval.json.

    Args:
        run_dir: a pretraining run dir (its config.yaml gives the dataset and model).
        protocols: any of linear, linear_sgd, knn, kmeans, finetune.
        overrides: ``section.key=value`` strings (eval.*, probe.*, finetune.*, data.root, ...).
        encoder_file: evaluate this encoder.safetensors instead of the run's.
        encoder: for a custom encoder: a fresh module of its kind; the run's weights are
            loaded into it, and an untouched copy of it is the random-init baseline.
    """
    from simclr.runtime import resolve_device, resolve_precision

    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise SimCLRError(f"unknown protocol '{unknown[0]}'; choose from {', '.join(PROTOCOLS)}")
    if run_dir is None and encoder_file is None:
        raise SimCLRError("give a run dir or --encoder FILE.safetensors")
    base = None
    if run_dir is not None:
        cfg_path = Path(run_dir) / "config.yaml"
        if not cfg_path.exists():
            raise SimCLRError(f"{cfg_path} not found; is {run_dir} a simclr run dir?")
        base = C.load_yaml(cfg_path)
    cfg = C.build_config(overrides=overrides or [], base=base)
    source = encoder_path(encoder_file or run_dir)
    fresh = copy.deepcopy(encoder) if encoder is not None else None
    enc = load_encoder(source, encoder)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    data = eval_data(cfg)
    if data["train"][0].shape[1:] != (enc.meta["in_channels"], enc.meta["image_size"],
                                      enc.meta["image_size"]):
        raise SimCLRError(f"the encoder was trained on {enc.meta['in_channels']}x"
                          f"{enc.meta['image_size']} px images but the eval data is "
                          f"{tuple(data['train'][0].shape[1:])}; set data.* to match the run")
    out_dir = Path(run_dir) if run_dir is not None else source.parent
    feat_protocols = [p for p in protocols if p != "finetune"]
    models: list[tuple[str, Any]] = [("simclr", enc)]
    if cfg.eval.baselines:
        models += [("random_init", random_encoder_like(enc, cfg.train.seed, fresh)),
                   ("raw_pixels", None)]
    results = []
    for name, model in models:
        t = time.perf_counter()
        if model is None:
            feats = {k: pixel_features(v[0]) for k, v in data.items()}
        else:
            cache = out_dir / "features" if name == "simclr" else None
            feats = features(model, data, cfg, device, precision, cache, source)
        log(f"{name}: features {tuple(feats['train'].shape)} in {time.perf_counter() - t:.1f}s")
        for row in run_protocols(feats, data, feat_protocols, cfg):
            results.append({"model": name, "epoch": enc.meta.get("epoch") if name == "simclr"
                            else 0, **row})
    if "finetune" in protocols:
        from simclr.finetune import finetune
        for name, model in models:
            if model is not None:
                row = finetune(model, data, cfg, device, precision, log=log)
                results.append({"model": name, "epoch": model.meta.get("epoch"), **row})
    report = {"run_dir": str(run_dir) if run_dir is not None else None, "encoder": str(source),
              "dataset": cfg.data.name, "epoch": enc.meta.get("epoch"),
              "step": enc.meta.get("step"), "feature_dim": enc.feature_dim,
              "protocols": list(protocols), "results": results}
    if write:
        text = json.dumps(report, indent=2)
        atomic_write(out_dir / EVAL_JSON, lambda tmp: tmp.write_text(text))
    return report


def format_table(report: dict[str, Any]) -> str:
    """One row per model, one column per metric."""
    cols = [("linear", "top1", "linear top1"), ("linear", "top5", "linear top5"),
            ("linear_sgd", "top1", "linear_sgd top1"),
            ("knn", "top1", "kNN top1"), ("kmeans", "nmi", "k-means NMI"),
            ("kmeans", "ari", "ARI"), ("kmeans", "accuracy", "cluster acc"),
            ("finetune", "top1", "finetune top1")]
    present = [c for c in cols if any(r["protocol"] == c[0] and r.get(c[1]) is not None
                                      for r in report["results"])]
    names = list(dict.fromkeys(r["model"] for r in report["results"]))
    header = ["model"] + [c[2] for c in present]
    lines = [header]
    for name in names:
        row = [name]
        for proto, key, _ in present:
            vals = [r[key] for r in report["results"] if r["model"] == name
                    and r["protocol"] == proto and r.get(key) is not None]
            row.append(f"{100 * vals[0]:.2f}" if vals else "-")
        lines.append(row)
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    text = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in lines]
    test = next((r for r in report["results"]), None)
    sizes = f" (train {test['n_train']}, test {test['n_test']})" if test else ""
    return (f"{report['dataset']} epoch {report['epoch']}{sizes}, percent on the test split:\n"
            + "\n".join(text))
