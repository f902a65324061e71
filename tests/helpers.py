"""Helpers shared by the end-to-end tests."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parent.parent


def run_cli(*args, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m simclr ARGS`` in a subprocess with this checkout importable."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "simclr", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)
