"""Run-directory state: atomic checkpoints (loaded with ``weights_only=True``), the safetensors
encoder export and the metrics log (trimmed to the checkpoint on resume)."""

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

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from simclr.config import Config, diff
from simclr.errors import SimCLRError

try:
    import fcntl
except ImportError:  # Windows: no flock; run_lock says so and runs unlocked
    fcntl = None

CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"
ENCODER = "encoder.safetensors"
_ENCODER_FORMAT = "simclr-encoder-v1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``: a reader (or a crash) sees
    the old file or the new one, never a partial one.

    The file gets the permissions a plain ``open(path, "w")`` gives (0666 less the umask, so
    usually 0644), whatever ``write`` created it with (safetensors makes its files 0600).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if os.name == "nt":  # folders cannot be opened (or fsynced) there
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    """Restore :func:`rng_state`; device states in older checkpoints (``cuda``) are ignored."""
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
    """SimCLRError, unless ``force``, when :func:`resume_changes` finds any."""
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

