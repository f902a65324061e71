"""Building a config: defaults <- a saved mapping <- a YAML preset <- ``--section.key=value``
overrides, every key checked against the fields of its section and every value against its
type (`coerce`), then `validate`: settings that cannot work
are refused, each with the fix. A mistake is a `SimCLRError` naming the key and the
valid choices. Nothing here imports torch (only a ``timm:`` / ``torchvision:`` arch imports
that package), so a typo fails in a fraction of a second.

What needs the data is checked where it is read: that it is there and the batch fits it
(``simclr.train.pretrain``).
"""

from __future__ import annotations

import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from simclr.config.packages import check_arch, is_external
from simclr.config.schema import OPTIM_DEFAULTS, RESNETS, Config
from simclr.config.yamlio import closest, coerce, load_yaml, parse_value
from simclr.errors import SimCLRError

CUSTOM = "custom"  # model.arch of a run whose encoder module came through the Python API
# Keys that shape our ResNets only; other encoders need their defaults (model.init still sets
# the projection head's init).
RESNET_ONLY = {"width": 1.0, "shortcut": "identity", "zero_init_residual": False}


def _section_fields(section: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in fields(section)}


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set ``cfg.<section>.<key>`` from a parsed value, checking the key and its type."""
    sections = [f.name for f in fields(cfg)]
    parts = dotted.split(".")
    if len(parts) != 2 or parts[0] not in sections:
        raise SimCLRError(
            f"unknown config key '{dotted}': {closest(parts[0], sections)}"
            f"keys look like section.key with section one of {', '.join(sections)}"
        )
    section = getattr(cfg, parts[0])
    known = _section_fields(section)
    if parts[1] not in known:
        raise SimCLRError(
            f"unknown config key '{dotted}': {closest(parts[1], list(known))}"
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


def _resolve_choices(cfg: Config) -> None:
    """Every key typed with a ``Literal`` (set in Python, so not checked when set) checked and
    spelled as its choice (``FashionMNIST`` -> ``fashion_mnist``), in place."""
    for section in fields(cfg):
        values = getattr(cfg, section.name)
        for key, tp in _section_fields(values).items():
            if typing.get_origin(tp) is typing.Literal:
                value = getattr(values, key)
                setattr(values, key, coerce(value, tp, f"{section.name}.{key}"))


def _fill_optim(cfg: Config) -> None:
    for key, value in OPTIM_DEFAULTS[cfg.optim.name].items():
        if getattr(cfg.optim, key) is None:
            setattr(cfg.optim, key, value)


def check_model_arch(m) -> None:
    """SimCLRError unless ``model.arch`` (of a ``Model`` section) is one of our ResNets,
    ``timm:<name>`` / ``torchvision:<name>`` (the package must import and know the name,
    `simclr.config.packages`) or ``custom`` (a module given to the Python API); our
    ResNets' own keys are refused for the others."""
    if m.arch in RESNETS:
        if m.kwargs:
            raise SimCLRError(f"model.kwargs={m.kwargs} applies to timm: and torchvision: models "
                              f"only, not to model.arch={m.arch}; drop it (our ResNets take "
                              "model.width, model.stem, model.shortcut)")
        return
    if is_external(m.arch):
        check_arch(m.arch)
    elif m.arch == CUSTOM and m.kwargs:
        raise SimCLRError("model.kwargs applies to timm: and torchvision: models, not to a "
                          "custom module (build it with its arguments yourself); drop it")
    elif m.arch != CUSTOM:
        raise SimCLRError(f"unknown model.arch '{m.arch}': {closest(m.arch, list(RESNETS))}"
                          f"choose one of {', '.join(RESNETS)}, timm:NAME or torchvision:NAME "
                          "(with that package installed)")
    for key, default in RESNET_ONLY.items():
        if getattr(m, key) != default:
            raise SimCLRError(f"model.{key}={getattr(m, key)} applies to our resnet18/34/50 "
                              f"only, not to model.arch={m.arch}; drop it")


def views_checks(groups: tuple[tuple[int | float, ...], ...]) -> list[tuple[bool, str]]:
    """``(ok, message)`` checks of ``augment.views`` for `validate`."""
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
    """Refuse settings that cannot work, each with the fix; in place, spell every choice as
    the schema does and fill the optimizer's lr and weight decay where unset
    (`OPTIM_DEFAULTS`)."""
    _resolve_choices(cfg)
    _fill_optim(cfg)
    check_model_arch(cfg.model)
    checks = [
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (cfg.loss.temperature > 0, "loss.temperature must be > 0"),
        (cfg.loss.scale > 0, "loss.scale must be > 0 (1 = per-view mean, 2 = the tf reference)"),
        (cfg.loss.dclw_sigma > 0, "loss.dclw_sigma must be > 0"),
        (not (cfg.loss.name == "dclw" and cfg.loss.supervised),
         "loss.name=dclw weights the two views of one image (the paper's form), not the "
         "positives of a class: use loss.name=dcl with loss.supervised=true"),
        (0 <= cfg.train.ema < 1, "train.ema must be in [0, 1) (a decay such as 0.999; 0 = off)"),
        (cfg.train.batch_size >= 2, "train.batch_size must be >= 2 (NT-Xent needs negatives)"),
        (cfg.train.epochs >= 1, "train.epochs must be >= 1"),
        (cfg.train.max_steps >= 0, "train.max_steps must be >= 0 (0 = no limit)"),
        (cfg.train.log_every >= 1, "train.log_every must be >= 1"),
        (cfg.train.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0 = per epoch)"),
        (cfg.data.subset >= 0, "data.subset must be >= 0 (0 = all)"),
        (cfg.data.stream != "on" or cfg.data.name == "folder",
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
        (0 < cfg.augment.size_start <= 1,
         "augment.size_start must be in (0, 1] (1 = the views' own size throughout)"),
        (0 <= cfg.augment.size_ramp[0] < cfg.augment.size_ramp[1] <= 1,
         "augment.size_ramp must be two fractions of the run 0 <= start < end <= 1"),
        (cfg.augment.size_stages == 0 or cfg.augment.size_stages >= 2,
         "augment.size_stages must be 0 (pixel by pixel) or >= 2 (sizes from start to full)"),
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
    checks += views_checks(cfg.augment.views)
    for ok, message in checks:
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


__all__ = ["CUSTOM", "RESNET_ONLY", "advice", "build_config", "check_model_arch",
           "diff", "set_value", "validate", "views_checks"]
