"""Evaluate a run's encoder: ``load_encoder`` and ``evaluate`` (features, protocols, baselines,
``eval.json``). The protocol math lives in :mod:`simclr.protocols` and :mod:`simclr.clustering`."""

from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from simclr import config as C
from simclr.augment import normalize
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
from simclr.results import (  # noqa: F401  (EVAL_JSON, format_table: re-exported)
    EVAL_JSON,
    PROTOCOLS,
    format_table,
    read_eval,
    result_inputs,
    write_eval,
)


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
        """Float images in [0, 1], or uint8 images (0-255, divided by 255), N x C x H x W."""
        if x.dtype == torch.uint8:
            x = x.float() / 255
        elif not x.is_floating_point():
            raise SimCLRError(f"the encoder takes float images in [0, 1] or uint8 images, got "
                              f"{x.dtype}; convert with x.float() / 255")
        return self.encoder(normalize(x, self.mean, self.std))  # N x D


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


def monitor_config(cfg: C.Config) -> C.Config:
    """``cfg`` for the online kNN monitor and the neighbour bank: with ``data.subset = N`` an
    unset (0) ``eval.subset`` / ``eval.test_subset`` becomes N, so a run on N images is judged
    on a bank of those N and at most N test images (``simclr eval`` keeps the full splits)."""
    if not cfg.data.subset:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.eval.subset = cfg.eval.subset or cfg.data.subset
    cfg.eval.test_subset = cfg.eval.test_subset or cfg.data.subset
    return cfg


def _digest(tensors: list[tuple[str, Tensor]]) -> str:
    """sha256 (20 hex digits) of named tensors: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:20]


def model_digest(enc: nn.Module) -> str:
    """Identity of a module's numbers: the digest of its state (weights, BatchNorm statistics,
    and for a :class:`NormalizedEncoder` its mean/std)."""
    return _digest(sorted(enc.state_dict().items()))


def features(enc: NormalizedEncoder, data: dict, cfg: C.Config, device: torch.device,
             precision: str, cache_dir: Path | None = None) -> dict[str, Tensor]:
    """Train/test features of the frozen encoder, cached as safetensors in ``cache_dir``.

    A cache file is keyed by everything that changes the features: the encoder's state
    (:func:`model_digest`), the images themselves, the precision and the device type.
    """
    out = {}
    digest = model_digest(enc) if cache_dir is not None else None
    for split, (images, _) in data.items():
        cache = None
        if cache_dir is not None:
            key = _digest([(digest, images), (f"{device.type}:{precision}", torch.zeros(0))])
            cache = cache_dir / f"{key}.safetensors"
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
    state, protocol, settings; see :mod:`simclr.results`).

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
    from simclr.runtime import resolve_device, resolve_precision

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
        from simclr.finetune import finetune
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

