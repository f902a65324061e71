"""The wheel ships the package as laid out: every module of every subpackage."""

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_module_of_the_source_tree(tmp_path):
    src = tmp_path / "src"  # a clean copy: no build/ left by an earlier build can fill gaps
    shutil.copytree(REPO / "simclr", src / "simclr",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    isolation = [] if importlib.util.find_spec("setuptools") is None else \
        ["--no-build-isolation"]  # the installed setuptools: no download needed
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("simclr-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.startswith("simclr/") and n.endswith(".py")}
    source = {p.relative_to(REPO).as_posix() for p in (REPO / "simclr").rglob("*.py")}
    assert shipped == source
    assert {"simclr/train/loop.py", "simclr/evaluation/pipeline.py"} <= shipped
