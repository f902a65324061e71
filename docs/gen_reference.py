"""The reference pages, written from the code at every ``mkdocs build`` (mkdocs-gen-files):
the command line (``simclr.cli``'s parser), every config key (the dataclasses of
``simclr.config.schema``: type, default and the comment beside the field) and one API page a
module (mkdocstrings renders its docstrings). Nothing here is edited by hand: a new key,
option or module appears by itself."""

from __future__ import annotations

import argparse
import ast
import io
import tokenize
import typing
from dataclasses import fields
from pathlib import Path

import mkdocs_gen_files

from simclr.cli import _parser, _text
from simclr.config import OPTIM_DEFAULTS, Config
from simclr.config import schema as schema_module

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "simclr"


def field_comments() -> dict[tuple[str, str], str]:
    """(class name, field) -> the comment beside the field in schema.py, with the comment
    lines right above it."""
    source = Path(schema_module.__file__).read_text()
    source_lines = source.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                above, line = [], item.lineno - 1
                while line in comments and source_lines[line - 1].lstrip().startswith("#"):
                    above.insert(0, comments[line])
                    line -= 1
                beside = comments.get(item.lineno, "")
                out[node.name, item.target.id] = " ".join([*above, beside]).strip()
    return out


def type_text(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " \\| ".join(f"`{c}`" for c in typing.get_args(tp))
    return f"`{getattr(tp, '__name__', None) or str(tp).replace('typing.', '')}`"


def config_page() -> str:
    cfg, comments = Config(), field_comments()
    lines = ["# Config keys", "",
             "Every key of the one config, with its type and default, as the code defines them "
             "(`simclr/config/schema.py`). Set one on the command line as "
             "`--section.key=value` (lists as `--augment.crop_scale=0.2,1`), in a YAML preset "
             "as `section: {key: value}`, or in Python with "
             "`simclr.build_config(overrides={\"section.key\": value})`.", ""]
    for section in fields(cfg):
        values = getattr(cfg, section.name)
        hints = typing.get_type_hints(type(values))
        lines += [f"## {section.name}", "", "| key | type | default | meaning |",
                  "|---|---|---|---|"]
        for f in fields(values):
            meaning = comments.get((type(values).__name__, f.name), "").replace("|", "\\|")
            if not meaning:  # every key is documented: one without a comment fails the build
                raise SystemExit(f"{section.name}.{f.name}: no comment in simclr/config/schema.py")
            lines.append(f"| `{section.name}.{f.name}` | {type_text(hints[f.name])} | "
                         f"`{_text(getattr(values, f.name))}` | {meaning} |")
        lines.append("")
    per = ", ".join(f"{n}: {_text(d['lr'])} / {_text(d['weight_decay'])}"
                    for n, d in OPTIM_DEFAULTS.items())
    lines += ["`optim.lr` / `optim.weight_decay` left unset (`none`) are the optimizer's own: "
              f"{per}.", ""]
    return "\n".join(lines)


def cli_page() -> str:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = ["# Command line", "",
             "`simclr COMMAND [options] [--section.key=value ...]`; `simclr COMMAND --help` "
             "prints the same. Every command that takes config overrides takes any key of the "
             "[config](config.md). Errors a user can cause end with one line "
             "`simclr: error: ...` and exit code 2; `--debug` shows the traceback.", ""]
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, command in sub.choices.items():
        lines += [f"## simclr {name}", "", helps.get(name, "").capitalize() + ".", "",
                  "```text", command.format_usage().strip(), "```", "",
                  "| argument | meaning |", "|---|---|"]
        for action in command._actions:
            if action.dest in ("help", "debug") or action.help == argparse.SUPPRESS:
                continue
            flag = ", ".join(action.option_strings) or action.dest
            meaning = (action.help or "").replace("|", "\\|")
            if action.default not in (None, False, argparse.SUPPRESS, []) and \
                    "default" not in meaning:
                meaning += f" (default {action.default})"
            lines.append(f"| `{flag}` | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def api_pages() -> list[tuple[str, str]]:
    """(page path, markdown) for every module of the package, and the index page that lists
    them by layer (the order of simclr/__init__.py)."""
    pages, index = [], ["# Python API", "",
                        "One page a module, from its docstrings. The public names are "
                        "importable from `simclr` itself (`simclr.pretrain`, "
                        "`simclr.evaluate_encoder`, ...); the modules are grouped by layer, "
                        "lowest first ([architecture](../architecture.md)).", ""]
    for path in sorted(PACKAGE.rglob("*.py"), key=_layer_order):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if package else parts)
        page = "_".join(parts[1:-1] + (() if package else parts[-1:])) or "simclr"
        options = "\n    options:\n      members: false" if name == "simclr" else ""
        pages.append((f"reference/api/{page}.md", f"# `{name}`\n\n::: {name}{options}\n"))
        index.append(f"{'' if package else '    '}- [`{name}`](api/{page}.md)")
    pages.append(("reference/api.md", "\n".join(index) + "\n"))
    return pages


LAYERS = ["__init__", "errors", "runtime", "config", "data", "augment", "models", "train",
          "evaluation", "tools", "cli"]


def _layer_order(path: Path) -> tuple:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    top = parts[0] if len(parts) > 1 else parts[0]
    return (LAYERS.index(top) if top in LAYERS else len(LAYERS), len(parts) > 1 and
            parts[-1] != "__init__", parts)


with mkdocs_gen_files.open("reference/config.md", "w") as f:
    f.write(config_page())
with mkdocs_gen_files.open("reference/cli.md", "w") as f:
    f.write(cli_page())
for page, text in api_pages():
    with mkdocs_gen_files.open(page, "w") as f:
        f.write(text)
