"""Atomic file writes: the one way the package writes a file (checkpoints, the encoder, configs,
metrics trims, eval.json, caches, reports, pictures, sweep tables)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``: a reader (or a crash) sees
    the old file or the new one, never a partial one. Missing parent folders are made.

    The temporary file is ``.<name>.tmp<pid>`` beside ``path`` (its suffix is not the file's:
    a writer that infers the format from the name must be told it). The file gets the
    permissions a plain ``open(path, "w")`` gives (0666 less the umask, so usually 0644),
    whatever ``write`` created it with (safetensors makes its files 0600).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if os.name != "nt":  # folders cannot be opened (or fsynced) there
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


__all__ = ["atomic_write"]
