"""Wall time of `simclr` commands that should answer at once: `--help` and argument errors.

    python benchmarks/startup_bench.py [--runs 10] [--repo DIR]

Each command runs ``--runs`` times (after one untimed run) as ``python -m simclr ...`` with
``PYTHONPATH=DIR`` (default: this checkout), so an older checkout (``git archive REV | tar -x
-C DIR``) can be timed the same way. Prints min / median / max wall seconds per command, whole
process (interpreter start included), and each command's exit code.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "--help": ["--help"],
    "usage error": ["eval", "--protocl=x"],
    "config key typo": ["pretrain", "--train.epoch=3"],
    "impossible value": ["pretrain", "--optim.lr=-1"],
}


def time_command(args: list[str], repo: Path, runs: int) -> tuple[list[float], int]:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "simclr", *args]
    # cwd=repo: `python -m` puts the working directory first on sys.path
    code = subprocess.run(cmd, env=env, cwd=repo, capture_output=True).returncode  # warm-up
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=repo, capture_output=True)
        walls.append(time.perf_counter() - t)
    return walls, code


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = p.parse_args()
    print(f"repo {args.repo}, {args.runs} runs each, wall seconds (min / median / max)")
    print("| command | exit | min | median | max |\n|---|---|---|---|---|")
    for name, cmd in COMMANDS.items():
        walls, code = time_command(cmd, args.repo, args.runs)
        print(f"| `simclr {' '.join(cmd)}` ({name}) | {code} | {min(walls):.2f} | "
              f"{statistics.median(walls):.2f} | {max(walls):.2f} |")


if __name__ == "__main__":
    main()
