"""Helpers shared by the end-to-end tests."""

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).parent.parent


@dataclass
class Result:
    """What a ``simclr`` command did: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def _set(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


@contextlib.contextmanager
def environ(changes: dict[str, str | None]):
    """``os.environ`` with ``changes`` (None removes a variable), restored afterwards."""
    saved = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            _set(k, v)
        yield
    finally:
        for k, v in saved.items():
            _set(k, v)


def cli(*args, env: dict[str, str | None] | None = None, cwd: str | Path | None = None) -> Result:
    """``simclr ARGS`` in this process (:func:`simclr.cli.main`): its exit code, stdout and
    stderr as a console user sees them, warnings included (one ``simclr: warning:`` line each,
    as the real command prints them).

    ``env`` changes environment variables for the call (None removes one); ``cwd`` is the
    working directory for the call. A subprocess (:func:`run_cli`) is for what only a process
    shows: the console script, the allocator re-exec, signals, exit handlers.
    """
    from simclr import cli as simclr_cli

    out, err = io.StringIO(), io.StringIO()
    here, formatwarning = os.getcwd(), warnings.formatwarning

    def show(message, category, filename, lineno, file=None, line=None):
        err.write(warnings.formatwarning(message, category, filename, lineno, line))

    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                environ(env or {}), warnings.catch_warnings():
            warnings.resetwarnings()  # the filters of a fresh process
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                             ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = show
            if cwd is not None:
                os.chdir(cwd)
            try:
                code = simclr_cli.main([str(a) for a in args])
            except SystemExit as e:  # argparse: --help, usage errors
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    finally:
        os.chdir(here)
        warnings.formatwarning = formatwarning  # the command sets its one-line format
    return Result(code, out.getvalue(), err.getvalue())


def one_line_error(result, fragment: str) -> str:
    """Assert ``result`` (a :class:`Result` or a CompletedProcess) is exit code 2 with exactly
    one stderr line ``simclr: error: ...`` containing ``fragment``, no traceback; returns it."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simclr: error: "), result.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


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


def two_rank_shards(z: torch.Tensor, views: int, n: int) -> list[torch.Tensor]:
    """A view-major global batch of 2 ranks x ``n`` images -> each rank's view-major rows."""
    per_view = z.view(views, 2 * n, -1)
    return [per_view[:, r * n:(r + 1) * n].reshape(views * n, -1) for r in range(2)]


def second_rank_gather(shards: list[torch.Tensor], rank: int, views: int, n: int):
    """A stand-in for ``gather_with_grad`` on ``rank`` of 2, as the multi-view losses call it:
    the N x (V D) normalized rows it is given, with the other rank's before (rank 1) or after
    (rank 0) them."""
    other = torch.nn.functional.normalize(shards[1 - rank], dim=1).view(views, n, -1)
    other = other.transpose(0, 1).reshape(n, -1)
    return lambda m: torch.cat([m, other] if rank == 0 else [other, m])

