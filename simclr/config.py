"""One dataclass config: defaults, YAML presets, ``--section.key=value`` overrides.

Every value is checked against its field's type and every key against the fields of its
section; a mistake is a :class:`SimCLRError` naming the key and the valid choices.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from simclr.errors import SimCLRError
from simclr.yamlio import coerce, load_yaml, parse_value, save_yaml  # noqa: F401  (re-exported)


@dataclass
class Data:
    name: str = "cifar10"  # cifar10 | cifar100 | stl10 | fashion_mnist | mnist | folder
    root: str | None = None  # folder/archive with the data; None -> default location/cache
    subset: int = 0  # first N training images; 0 = all
    image_size: int = 0  # resize to this side; 0 = the dataset's native size (folders: 64)
    download: bool = True  # fetch official files (md5-checked) when missing
    split: str = "train"  # training split: train | unlabeled | train+unlabeled (STL-10)
    stream: str = "auto"  # folder: on (decode per batch in workers) | off | auto (when too big)


@dataclass
class Augment:
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crop
    flip_p: float = 0.5
    jitter_strength: float = 0.5  # s: brightness/contrast/saturation 0.8s, hue 0.2s
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float | None = None  # None: 0.5 above 32 px, off at <= 32 px (the reference)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    crop_interpolation: str = "bilinear"  # bilinear | bicubic (the reference: Keys a=-0.5)
    mean: tuple[float, ...] | None = None  # per-channel; None -> measured on the training data
    std: tuple[float, ...] | None = None
    # view groups [count, size] or [count, size, scale_lo, scale_hi]: size <= 1 is a fraction
    # of the image side, > 1 pixels; the crop scale defaults to crop_scale
    views: tuple[tuple[int | float, ...], ...] = ((2, 1),)


@dataclass
class Model:
    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50 | timm:NAME | torchvision:NAME
    width: float = 1.0  # multiplier of 64-128-256-512 channels
    stem: str = "auto"  # cifar (3x3, no max-pool) | imagenet | auto (cifar for <= 64 px)
    proj_layers: int = 2  # linear layers in the projection head
    proj_hidden: int = 0  # hidden width; 0 = the encoder's feature dim
    proj_dim: int = 128
    proj_bn: bool = False  # BatchNorm after each hidden linear layer of the head
    proj_bn_last: bool = False  # BatchNorm (scale only) on the output layer too, no bias there
    shortcut: str = "identity"  # first block of a stage with matching shapes: identity | projection
    zero_init_residual: bool = False  # last BN gamma of every block starts at 0 (the reference)
    init: str = "torchvision"  # torchvision | reference (tf VarianceScaling convs, N(0, .01) head)
    sync_bn: bool = True  # global BatchNorm over all processes when distributed


@dataclass
class Loss:
    temperature: float = 0.5
    scale: float = 1.0  # the optimizer minimizes scale x the logged per-view mean (2 = the tf ref)
    supervised: bool = False  # SupCon: every view of an image with the same label is a positive


@dataclass
class Optim:
    name: str = "lars"  # lars | sgd | adam | adamw
    lr: float | None = None  # base lr, scaled by lr_scaling; None: OPTIM_DEFAULTS[name]
    lr_scaling: str = "linear"  # linear (lr x B/256) | sqrt (lr x sqrt(B), the ref) | none
    weight_decay: float | None = None  # None: OPTIM_DEFAULTS[name]
    momentum: float = 0.9
    nesterov: bool = False
    eta: float = 1e-3  # LARS trust coefficient
    warmup_epochs: float = 10.0
    clip_grad_norm: float = 0.0  # 0 = off


@dataclass
class Train:
    batch_size: int = 512  # global batch (images; each gives two views)
    epochs: int = 100
    max_steps: int = 0  # stop after this global step (schedule unchanged); 0 = no limit
    step_rule: str = "epochs"  # epochs (E x N//B steps) | reference (N x E // B + 1, the tf ref)
    seed: int = 0
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    channels_last: bool = True
    compile: bool = False
    log_every: int = 50  # steps per metrics.jsonl window line
    checkpoint_every: int = 0  # also checkpoint every N steps inside epochs; 0 = epoch ends only
    progress: bool = True  # tqdm progress bar
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard (needs the tensorboard package)


@dataclass
class Eval:
    every: int = -1  # online kNN monitor every N epochs of pretraining; -1 = 4 times a run; 0 = off
    knn_k: int = 200
    knn_temperature: float = 0.1
    kmeans_init: int = 10  # k-means restarts (the best inertia is kept)
    batch_size: int = 512  # feature extraction batch
    subset: int = 0  # first N labeled train images for probe / kNN bank; 0 = all
    test_subset: int = 0  # first N test images; 0 = all
    baselines: bool = True  # also evaluate raw pixels and a randomly initialized encoder


@dataclass
class Probe:
    val_fraction: float = 0.1  # stratified part of the train split that chooses weight decay
    split: float = 0.0  # > 0: train on this fraction of the train split, test on the rest
    sgd_epochs: int = 100  # linear_sgd protocol (the tf reference's linear eval) ...
    sgd_batch_size: int = 512
    sgd_lr: float = 0.1  # x B/256; SGD Nesterov momentum 0.9, cosine, no weight decay


@dataclass
class Finetune:
    labels: float = 0.1  # fraction of the labeled train split used (stratified)
    epochs: int = 30
    lr: float = 0.05  # SGD, momentum 0.9, cosine, lr x B/256
    weight_decay: float = 5e-4
    batch_size: int = 256


@dataclass
class Config:
    data: Data = field(default_factory=Data)
    augment: Augment = field(default_factory=Augment)
    model: Model = field(default_factory=Model)
    loss: Loss = field(default_factory=Loss)
    optim: Optim = field(default_factory=Optim)
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)
    probe: Probe = field(default_factory=Probe)
    finetune: Finetune = field(default_factory=Finetune)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (tuples become lists) for YAML and checkpoints."""
        return _plain(asdict(self))


# Each optimizer's lr (before lr_scaling) and weight decay, used where the config leaves them
# unset (None), so that switching or sweeping optim.name never hands one optimizer another's lr.
# lars: the reference's CIFAR recipe; sgd: the SGD recipe (91.7% linear on CIFAR-10); adam /
# adamw: the usual Adam step with L2 (adam) or decoupled (adamw) decay. The resolved values
# are what config.yaml saves.
OPTIM_DEFAULTS: dict[str, dict[str, float]] = {
    "lars": {"lr": 1.0, "weight_decay": 1e-4},
    "sgd": {"lr": 0.06, "weight_decay": 5e-4},
    "adam": {"lr": 1e-3, "weight_decay": 1e-6},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2},
}


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _closest(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{match[0]}'? " if match else ""


def _section_fields(section: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in fields(section)}


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set ``cfg.<section>.<key>`` from a parsed value, checking the key and its type."""
    sections = [f.name for f in fields(cfg)]
    parts = dotted.split(".")
    if len(parts) != 2 or parts[0] not in sections:
        raise SimCLRError(
            f"unknown config key '{dotted}': {_closest(parts[0], sections)}"
            f"keys look like section.key with section one of {', '.join(sections)}"
        )
    section = getattr(cfg, parts[0])
    known = _section_fields(section)
    if parts[1] not in known:
        raise SimCLRError(
            f"unknown config key '{dotted}': {_closest(parts[1], list(known))}"
            f"valid keys of '{parts[0]}': {', '.join(known)}"
        )
    setattr(section, parts[1], coerce(value, known[parts[1]], dotted))


def _apply_mapping(cfg: Config, mapping: Any, source: str) -> None:
    if not isinstance(mapping, dict):
        raise SimCLRError(f"{source}: expected a mapping of sections, like 'train: {{epochs: 10}}'")
    for section, values in mapping.items():
        if not isinstance(values, dict):
            raise SimCLRError(f"{source}: section '{section}' must be a mapping of key: value")
        for key, value in values.items():
            try:
                set_value(cfg, f"{section}.{key}", value)
            except SimCLRError as e:
                raise SimCLRError(f"{source}: {e}") from None


def build_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    base: dict | None = None,
) -> Config:
    """Defaults <- ``base`` mapping <- YAML file <- overrides, all checked, then validated.

    Args:
        path: a YAML preset holding only the keys it changes.
        overrides: ``["train.epochs=10", ...]`` strings, or a ``{"train.epochs": 10}`` dict.
        base: a nested mapping applied before the file (e.g. a run's saved config).
    """
    cfg = Config()
    if base is not None:
        _apply_mapping(cfg, base, "saved config")
    if path is not None:
        _apply_mapping(cfg, load_yaml(path), str(path))
    items = overrides.items() if isinstance(overrides, dict) else _split(overrides or [])
    for key, value in items:
        set_value(cfg, key, value)
    validate(cfg)
    return cfg


def _split(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        key, sep, text = item.lstrip("-").partition("=")
        if not sep:
            raise SimCLRError(f"override '{item}' has no value; write it as --{key}=VALUE")
        out.append((key, parse_value(text)))
    return out


def _choice(key: str, value: str, choices: list[str]) -> None:
    if value not in choices:
        raise SimCLRError(
            f"unknown {key} '{value}': {_closest(value, choices)}choose one of {', '.join(choices)}"
        )


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_dataset(name: str, names: list[str]) -> str:
    """``names``' entry spelled like ``name`` up to case, ``-`` and ``_`` (``FashionMNIST``,
    ``fashion-mnist`` -> ``fashion_mnist``; ``CIFAR-10`` -> ``cifar10``), else ``name``."""
    return next((n for n in names if _key(n) == _key(name)), name)


def _fill_optim(cfg: Config) -> None:
    for key, value in OPTIM_DEFAULTS.get(cfg.optim.name, {}).items():
        if getattr(cfg.optim, key) is None:
            setattr(cfg.optim, key, value)


def complete(cfg: Config) -> Config:
    """Fill what the config leaves to its context, in place: the optimizer's lr and weight
    decay where unset (:data:`OPTIM_DEFAULTS`) and the dataset's canonical name."""
    from simclr.data import DATASETS

    cfg.data.name = canonical_dataset(cfg.data.name, list(DATASETS))
    _fill_optim(cfg)
    return cfg


def views_checks(groups: tuple[tuple[int | float, ...], ...]) -> list[tuple[bool, str]]:
    """``(ok, message)`` checks of ``augment.views`` for :func:`validate`."""
    def good(g: tuple[int | float, ...]) -> bool:
        return (len(g) in (2, 4) and float(g[0]).is_integer() and g[0] >= 1 and g[1] > 0
                and (g[1] <= 1 or float(g[1]).is_integer())
                and (len(g) == 2 or 0 < g[2] <= g[3] <= 1))

    shape = ("augment.views: each group is [count, size] or [count, size, scale_lo, scale_hi] "
             "(count >= 1; size <= 1 a fraction of the image side, > 1 whole pixels; "
             "0 < scale_lo <= scale_hi <= 1), e.g. [[2, 1], [4, 0.5, 0.05, 0.4]]")
    bad = next((g for g in groups if not good(g)), None)
    return [(bad is None, f"{shape}; got {[list(g) for g in groups]}"),
            (bad is not None or sum(int(g[0]) for g in groups) >= 2,
             f"augment.views must make at least 2 views per image in all, got "
             f"{[list(g) for g in groups]}")]


def validate(cfg: Config) -> None:
    """:func:`complete` the config, then refuse settings that cannot work, each with the fix.

    The checks that need no registry come first: they import no torch, so a mistyped value
    fails in a fraction of a second.
    """
    _choice("optim.name", cfg.optim.name, sorted(OPTIM_DEFAULTS))
    _fill_optim(cfg)
    _choice("optim.lr_scaling", cfg.optim.lr_scaling, ["linear", "sqrt", "none"])
    _choice("model.stem", cfg.model.stem, ["auto", "cifar", "imagenet"])
    _choice("augment.crop_interpolation", cfg.augment.crop_interpolation,
            ["bilinear", "bicubic"])
    _choice("train.precision", cfg.train.precision, ["auto", "bf16", "fp16", "fp32"])
    _choice("data.stream", cfg.data.stream, ["auto", "on", "off"])
    checks = [
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (cfg.loss.temperature > 0, "loss.temperature must be > 0"),
        (cfg.loss.scale > 0, "loss.scale must be > 0 (1 = per-view mean, 2 = the tf reference)"),
        (cfg.train.batch_size >= 2, "train.batch_size must be >= 2 (NT-Xent needs negatives)"),
        (cfg.train.epochs >= 1, "train.epochs must be >= 1"),
        (cfg.train.max_steps >= 0, "train.max_steps must be >= 0 (0 = no limit)"),
        (cfg.train.log_every >= 1, "train.log_every must be >= 1"),
        (cfg.train.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0 = per epoch)"),
        (cfg.data.subset >= 0, "data.subset must be >= 0 (0 = all)"),
        (cfg.data.stream != "on" or _key(cfg.data.name) == "folder",
         "data.stream=on streams image folders only: set data.name=folder or data.stream=auto"),
        (cfg.data.image_size >= 0, "data.image_size must be >= 0 (0 = native size)"),
        (cfg.model.width > 0, "model.width must be > 0"),
        (cfg.model.proj_layers >= 1, "model.proj_layers must be >= 1"),
        (cfg.model.proj_dim >= 1, "model.proj_dim must be >= 1"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (cfg.optim.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0"),
        (0 < cfg.augment.crop_scale[0] <= cfg.augment.crop_scale[1] <= 1,
         "augment.crop_scale must be two numbers 0 < lo <= hi <= 1"),
        (0 < cfg.augment.crop_ratio[0] <= cfg.augment.crop_ratio[1],
         "augment.crop_ratio must be two numbers 0 < lo <= hi"),
    ]
    checks += [
        (cfg.eval.every >= -1, "eval.every must be >= 0 epochs (0 = off) or -1 (auto)"),
        (cfg.eval.knn_k >= 1, "eval.knn_k must be >= 1"),
        (cfg.eval.knn_temperature > 0, "eval.knn_temperature must be > 0"),
        (cfg.eval.kmeans_init >= 1, "eval.kmeans_init must be >= 1"),
        (0 < cfg.probe.val_fraction < 1, "probe.val_fraction must be in (0, 1)"),
        (0 <= cfg.probe.split < 1, "probe.split must be in [0, 1) (0 = use the test split)"),
        (cfg.probe.sgd_epochs >= 1, "probe.sgd_epochs must be >= 1"),
        (cfg.probe.sgd_batch_size >= 1, "probe.sgd_batch_size must be >= 1"),
        (cfg.probe.sgd_lr > 0, "probe.sgd_lr must be > 0"),
        (0 < cfg.finetune.labels <= 1, "finetune.labels must be in (0, 1]"),
        (cfg.finetune.lr > 0, "finetune.lr must be > 0"),
        (cfg.finetune.epochs >= 1, "finetune.epochs must be >= 1"),
    ]
    for p_key in ("flip_p", "jitter_p", "gray_p", "blur_p"):
        p = getattr(cfg.augment, p_key)
        checks.append((p is None or 0 <= p <= 1, f"augment.{p_key} must be in [0, 1]"))
    for ok, message in checks:
        if not ok:
            raise SimCLRError(message)
    from simclr.data import DATASETS  # the registries import torch
    from simclr.models import INITS, SHORTCUTS, check_model_arch
    from simclr.optim import STEP_RULES

    complete(cfg)
    _choice("data.name", cfg.data.name, sorted(DATASETS))
    check_model_arch(cfg.model)
    _choice("model.shortcut", cfg.model.shortcut, list(SHORTCUTS))
    _choice("model.init", cfg.model.init, list(INITS))
    _choice("train.step_rule", cfg.train.step_rule, list(STEP_RULES))
    for ok, message in views_checks(cfg.augment.views):
        if not ok:
            raise SimCLRError(message)


def advice(cfg: Config) -> list[str]:
    """Warnings for settings that work but are likely mistakes, each with the fix."""
    out = []
    w, e = cfg.optim.warmup_epochs, cfg.train.epochs
    if w > 0 and w >= e:
        out.append(f"optim.warmup_epochs={w:g} >= train.epochs={e}: the lr rises for the whole "
                   "run, never reaches its peak and never decays; lower optim.warmup_epochs "
                   "(e.g. to a tenth of the epochs)")
    return out


def diff(a: dict, b: dict) -> list[str]:
    """Dotted keys whose values differ between two ``Config.to_dict()`` mappings."""
    keys = []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(set(sa) | set(sb)):
            if sa.get(key) != sb.get(key):
                keys.append(f"{section}.{key}")
    return keys


__all__ = [
    "OPTIM_DEFAULTS", "Augment", "Config", "Data", "Eval", "Finetune", "Loss", "Model", "Optim",
    "Probe", "Train", "advice", "build_config", "canonical_dataset", "complete", "diff",
    "load_yaml", "parse_value", "save_yaml", "set_value", "validate",
]
