"""The documentation cannot drift from the code: the site builds with no warning (broken links
fail), and every config key, command and preset that README.md or docs/ names exists."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simclr.cli import _parser
from simclr.config import build_config

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
KEY = re.compile(r"--([a-z_]+\.[a-z_]+)(?==|\b)")
COMMAND = re.compile(r"\bsimclr ([a-z][a-z-]+)")
PRESET = re.compile(r"configs/[A-Za-z0-9_.-]+\.yaml")
# words after "simclr " in prose that are not commands
NOT_COMMANDS = {"is", "does", "runs", "reads", "writes", "has", "takes", "and", "on", "package",
                "command", "itself", "with", "eval's", "sets", "gives", "uses", "prints", "import"}
PLACEHOLDERS = {"section.key"}


def commands() -> set[str]:
    import argparse

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def unknown_keys(text: str) -> list[str]:
    """The `--section.key` names in `text` that the config does not have."""
    bad = []
    for key in sorted(set(KEY.findall(text)) - PLACEHOLDERS):
        section, name = key.split(".")
        try:
            build_config().__getattribute__(section).__getattribute__(name)
        except AttributeError:
            bad.append(f"--{key}")
    return bad


def unknown_commands(text: str) -> list[str]:
    """The `simclr WORD` commands in `text` that the CLI does not have."""
    known = commands()
    return [f"simclr {word}" for word in sorted(set(COMMAND.findall(text)))
            if word not in known and word not in NOT_COMMANDS]


def test_every_config_key_the_pages_name_exists():
    bad = {str(page.relative_to(REPO)): unknown_keys(page.read_text()) for page in PAGES}
    assert not {page: keys for page, keys in bad.items() if keys}


def test_every_command_the_pages_name_exists():
    bad = {str(page.relative_to(REPO)): unknown_commands(page.read_text()) for page in PAGES}
    assert not {page: words for page, words in bad.items() if words}


def test_the_checks_find_a_renamed_key_and_command():
    page = "Run `simclr pretrain --train.epochz=3 --loss.name=dcl`, then `simclr evaluate RUN`."
    assert unknown_keys(page) == ["--train.epochz"]
    assert unknown_commands(page) == ["simclr evaluate"]


def test_every_preset_the_pages_name_exists_and_loads():
    named = {p for page in PAGES for p in PRESET.findall(page.read_text())}
    assert "configs/fashion_mnist_cpu.yaml" in named
    for preset in sorted(named):
        assert (REPO / preset).is_file(), preset
        build_config(REPO / preset)


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None
                    or importlib.util.find_spec("mkdocstrings") is None,
                    reason="needs the docs tools: pip install -e '.[docs]'")
def test_the_site_builds_strict(tmp_path):
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d",
                           str(tmp_path / "site")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
    config_page = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "train.ema" in config_page and "loss.dclw_sigma" in config_page  # from the code
