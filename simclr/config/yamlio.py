"""The YAML side of the config: a safe loader with YAML 1.2 booleans, command-line values and
their check against a field's type (a ``Literal`` field: one of its choices, spelled any way up
to case, ``-`` and ``_``), reading presets and writing resolved configs. Nothing in a file can
run code."""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from simclr.errors import SimCLRError
from simclr.runtime.files import atomic_write


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
    """Parse a command-line value as YAML (``1e-3``, ``true``, ``null``, ``0.2,1``,
    ``{img_size: 28, patch_size: 4}``)."""
    if "," in text and not text.strip().startswith(("[", "{")):
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
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def closest(word: str, choices: list[str]) -> str:
    """``did you mean 'X'? `` for the choice closest to ``word``, or nothing."""
    match = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{match[0]}'? " if match else ""


def _spelling(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints pass as floats, lists as tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except SimCLRError:
                pass
        raise SimCLRError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise SimCLRError(f"{key}: expected a mapping like {{img_size: 28, patch_size: 4}}, "
                              f"got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        choices = [str(c) for c in typing.get_args(tp)]
        if isinstance(value, str):
            match = next((c for c in choices if _spelling(c) == _spelling(value)), None)
            if match is not None:
                return match
        raise SimCLRError(f"unknown {key} '{value}': {closest(str(value), choices)}"
                          f"choose one of {', '.join(choices)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise SimCLRError(f"{key}: expected a list like 0.1,2.0, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise SimCLRError(f"{key}: expected {len(args)} values like 0.1,2.0, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise SimCLRError(f"{key}: expected {_type_name(tp)}, got {value!r}")


__all__ = ["YAMLLoader", "closest", "coerce", "load_yaml", "parse_value", "save_yaml"]
