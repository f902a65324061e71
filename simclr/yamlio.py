"""The YAML side of the config: a safe loader with YAML 1.2 booleans, command-line values,
reading presets and writing resolved configs. Nothing in a file can run code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from simclr.errors import SimCLRError


class YAMLLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no code runs) with YAML 1.2 booleans: only true/false are bools, so
    ``data.stream: on`` stays the string "on" instead of YAML 1.1's True."""


YAMLLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def parse_value(text: str) -> Any:
    """Parse a command-line value as YAML (``1e-3``, ``true``, ``null``, ``0.2,1``)."""
    if "," in text and not text.strip().startswith("["):
        text = f"[{text}]"
    try:
        return yaml.load(text, Loader=YAMLLoader)
    except yaml.YAMLError:
        return text


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with ``yaml.safe_load`` (no code from the file runs)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SimCLRError(f"cannot read config {path}: {e.strerror}; check the path") from None
    try:
        return yaml.load(text, Loader=YAMLLoader) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise SimCLRError(f"config {path} is not valid YAML{where}; fix its syntax") from None


def save_yaml(cfg, path: str | Path) -> None:
    """Write a config (its ``to_dict()``: every key, resolved) as YAML, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)


__all__ = ["YAMLLoader", "load_yaml", "parse_value", "save_yaml"]
