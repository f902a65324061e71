"""Helpers shared by the end-to-end tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).parent.parent


def run_cli(*args, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m simclr ARGS`` in a subprocess with this checkout importable."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "simclr", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def last_step(run_dir: Path) -> int:
    """The highest step in ``run_dir/metrics.jsonl`` (0 when none); a line cut by a crash is
    skipped. Used to SIGKILL a run once it passes a step."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return max((json.loads(x)["step"] for x in lines if x.endswith("}")), default=0)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def blobs(n: int, classes: int, dim: int, spread: float, seed: int):
    """Gaussian clusters: class means ``spread`` apart on average, unit noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=g) * spread
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    return means[labels] + torch.randn(n, dim, generator=g), labels
