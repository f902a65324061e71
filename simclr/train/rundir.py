"""A run directory and everything in it: `RunDir` owns a run's paths, its config (saved
resolved; loaded with the one "not found" message), the metrics log (appended, read, trimmed to
the checkpoint on resume), the lock, atomic checkpoints (loaded with ``weights_only=True``), the
safetensors encoder export and the loss history, and the rules for resuming it. Every file is
written through `simclr.runtime.files.atomic_write`.

Layout of a run dir::

    config.yaml          the resolved config        metrics.jsonl   window / epoch / knn lines
    checkpoint.pt        the training state         encoder.safetensors  the encoder + its record
    loss_history.npy     per-epoch mean losses      eval.json       evaluation results
    features/            cached features            plots/, report.md   pictures, the report
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from simclr.config import Config, build_config, diff, load_yaml, save_yaml
from simclr.errors import SimCLRError
from simclr.runtime.files import atomic_write

try:
    import fcntl
except ImportError:  # Windows: no flock; run_lock says so and runs unlocked
    fcntl = None

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.safetensors"
LOSSES = "loss_history.npy"
EVAL_JSON = "eval.json"
FEATURES = "features"
PLOTS = "plots"
REPORT = "report.md"
LOCK = ".lock"
_ENCODER_FORMAT = "simclr-encoder-v1"


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on ``run_dir`` (created if needed) while training in it.

    The OS drops the lock when the process dies, even by SIGKILL, so a crashed run never
    leaves a stale lock behind.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        warnings.warn(f"{run_dir} is not locked: this platform has no fcntl.flock, so nothing "
                      "stops a second simclr process from writing into it; run one at a time",
                      stacklevel=3)
        yield
        return
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise SimCLRError(f"{run_dir} is in use by another simclr process (pid {owner}); "
                              "wait for it to finish or use another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a training state (tensors, numbers, strings, lists, dicts) atomically."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: no code in the file can run."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise SimCLRError(f"checkpoint {path} not found; check the run directory") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise SimCLRError(
            f"checkpoint {path} is corrupt or not a simclr checkpoint ({first}); "
            "delete it to restart the run, or restore a good copy") from None


def load_model_state(model: torch.nn.Module, state: dict, source: Path) -> None:
    """``load_state_dict`` that turns an architecture mismatch into a one-line SimCLRError."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]
        raise SimCLRError(
            f"{source} holds a different model than the config ({detail}); use a new run dir "
            "or the matching --model.* settings") from None


def export_encoder(path: Path, encoder: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Encoder weights as safetensors with the settings needed to rebuild it.

    The metadata is one sorted JSON string, so identical training gives identical files.
    """
    tensors = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    header = {"simclr": json.dumps({"format": _ENCODER_FORMAT, **meta}, sort_keys=True)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=header))


def read_encoder(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of an exported encoder."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("simclr", "{}"))
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise SimCLRError(f"encoder file {path} not found; check the path") from None
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise SimCLRError(
            f"{path} is not a readable safetensors file ({e}); re-export it") from None
    if meta.get("format") != _ENCODER_FORMAT:
        raise SimCLRError(f"{path} has no simclr metadata; pass the --model.* settings it was "
                          "trained with")
    return tensors, meta


def append_metrics(path: Path, record: dict) -> None:
    """Append one JSON line to the run's metrics log."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` in file order.

    A last line cut short by a crash (not valid JSON) is skipped; a broken line elsewhere is
    an error, since the file would then not be one this package wrote.

    Raises:
        SimCLRError: the file is missing or corrupt.
    """
    path = Path(run_dir) / METRICS
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise SimCLRError(f"cannot read {path} ({e.strerror}); is {run_dir} a simclr run dir "
                          "that has trained at least one window?") from None
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the run was killed while writing this line
            raise SimCLRError(f"{path} line {i + 1} is not JSON; the file is corrupt (delete "
                              "the line to use the rest)") from None
        if isinstance(record, dict):
            records.append(record)
    return records


def trim_metrics(path: Path, step: int) -> None:
    """Drop metrics-log lines written after ``step``, the checkpoint a run resumes from (they
    will be written again), and lines cut by a crash."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    text = "".join(k + "\n" for k in keep)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def rng_state() -> dict[str, Any]:
    """The global CPU generator's state, for code that draws from it (none of ours does after
    the model's init: a step's draws come from generators seeded by (seed, step)).

    No CUDA states: restoring them needs as many visible GPUs as saved them, and a run must
    resume on any number of processes and devices.
    """
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state`; device states in older checkpoints (``cuda``) are ignored."""
    torch.set_rng_state(state["torch"])


# Keys a resumed run may change without --force: they do not alter what is computed.
RESUME_FREE = {"train.max_steps", "train.progress", "train.log_every", "train.device",
               "train.compile", "train.checkpoint_every", "train.tensorboard",
               "data.stream"}
RESUME_FREE_SECTIONS = {"eval", "probe", "finetune"}


def resume_changes(saved: dict, planned: dict) -> list[str]:
    """Dotted keys whose values differ between a run's saved config and the planned one
    (``Config.to_dict()`` mappings) and that change what is computed. A key the saved config
    lacks (written before the key existed) counts as its default: old runs resume."""
    defaults = Config().to_dict()
    saved = {s: {**defaults.get(s, {}), **v} for s, v in saved.items()}
    return [k for k in diff(saved, planned)
            if k not in RESUME_FREE and k.split(".")[0] not in RESUME_FREE_SECTIONS]


def check_resume(saved: dict, planned: dict, force: bool, run_dir: Path) -> None:
    """SimCLRError, unless ``force``, when `resume_changes` finds any."""
    changed = resume_changes(saved, planned)
    if changed and not force:
        raise SimCLRError(
            f"{run_dir} was started with other settings ({', '.join(changed)} differ); "
            "use a new --run-dir, or --force to resume with the new values")


def check_writable(run_dir: Path) -> None:
    """Fail before any work when ``run_dir`` cannot be created or written (tries for real)."""
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a directory")
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise SimCLRError(f"cannot write the run dir {run_dir} ({e.strerror or e}); choose "
                          "another --run-dir") from None


def encoder_file(run_dir_or_file: str | Path) -> Path:
    """The ``encoder.safetensors`` of a run dir, or the file given; SimCLRError when a run dir
    has not exported one yet."""
    path = Path(run_dir_or_file)
    if path.is_dir():
        path = path / ENCODER
        if not path.exists():
            raise SimCLRError(f"{path} not found: the run has not exported an encoder yet; run "
                              "`simclr pretrain` on it (a stopped run exports at its stop)")
    return path


class RunDir:
    """A run directory: its files' paths (`config`, `metrics`,
    `checkpoint`, `encoder`, ...) and what is done with them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    config = property(lambda self: self.path / CONFIG)
    metrics = property(lambda self: self.path / METRICS)
    checkpoint = property(lambda self: self.path / CHECKPOINT)
    encoder = property(lambda self: self.path / ENCODER)
    losses = property(lambda self: self.path / LOSSES)
    eval_json = property(lambda self: self.path / EVAL_JSON)
    features = property(lambda self: self.path / FEATURES)
    plots = property(lambda self: self.path / PLOTS)
    report = property(lambda self: self.path / REPORT)

    def saved_config(self) -> dict:
        """The run's config.yaml as a mapping; the one error when it is missing."""
        if not self.config.exists():
            raise SimCLRError(f"{self.config} not found; is {self.path} a simclr run dir?")
        return load_yaml(self.config)

    def load_config(self, overrides: list[str] | dict | None = None) -> Config:
        """The run's saved config with ``overrides`` applied, checked."""
        return build_config(overrides=overrides or [], base=self.saved_config())

    def save_config(self, cfg: Config) -> None:
        save_yaml(cfg, self.config)

    def record(self, record: dict) -> None:
        """Append one line to the metrics log."""
        append_metrics(self.metrics, record)

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def trim_metrics(self, step: int) -> None:
        trim_metrics(self.metrics, step)

    def lock(self):
        """`run_lock` on this run dir (a context manager)."""
        return run_lock(self.path)

    def check_writable(self) -> None:
        check_writable(self.path)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.checkpoint, state)

    def load_checkpoint(self) -> dict[str, Any]:
        return load_checkpoint(self.checkpoint)

    def export_encoder(self, encoder: torch.nn.Module, meta: dict[str, Any]) -> None:
        export_encoder(self.encoder, encoder, meta)

    def save_losses(self, history: list[float]) -> None:
        """The per-epoch mean losses as ``loss_history.npy`` (float64)."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # np.save adds .npy to a name that lacks it
                np.save(f, np.asarray(history, dtype=np.float64))
        atomic_write(self.losses, write)


__all__ = ["CHECKPOINT", "CONFIG", "ENCODER", "EVAL_JSON", "FEATURES", "LOSSES", "METRICS",
           "PLOTS", "REPORT", "RESUME_FREE", "RunDir", "append_metrics", "check_resume",
           "check_writable", "encoder_file", "export_encoder", "load_checkpoint",
           "load_model_state", "read_encoder", "read_metrics", "resume_changes", "rng_state",
           "run_lock", "save_checkpoint", "set_rng_state", "trim_metrics"]
