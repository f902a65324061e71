"""Use a caching allocator (tcmalloc or jemalloc) on Linux CPUs when one is installed.

With glibc malloc every activation above the mmap threshold is mapped and unmapped each step,
re-faulting its pages; a caching allocator keeps them. The library must be loaded before Python
starts, so ``simclr`` re-executes itself once with ``LD_PRELOAD`` set. ``SIMCLR_NO_ALLOCATOR=1``
opts out; ``SIMCLR_ALLOCATOR`` names the allocator in use (set by the re-exec).
"""

from __future__ import annotations

import glob
import os
import sys

# Searched in order: the first installed one is used.
LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libjemalloc.so.2")
SEARCH = ("/usr/lib/*-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
# jemalloc: keep freed pages (no decay) and purge from a background thread.
JEMALLOC_CONF = ("background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,"
                 "muzzy_decay_ms:-1")


def find_library() -> str | None:
    """Path of the first installed caching allocator, or None."""
    for name in LIBRARIES:
        for folder in SEARCH:
            hits = sorted(glob.glob(os.path.join(folder, name)))
            if hits:
                return hits[0]
    return None


def loaded() -> str | None:
    """The caching allocator already in LD_PRELOAD, if any."""
    for item in os.environ.get("LD_PRELOAD", "").replace(":", " ").split():
        if "tcmalloc" in item or "jemalloc" in item:
            return os.path.basename(item)
    return None


def describe() -> str:
    """For the startup line: which allocator this process uses."""
    return loaded() or "glibc malloc"


def maybe_reexec(argv: list[str]) -> None:
    """Re-execute ``python -m simclr ARGV`` with a caching allocator preloaded, once.

    No-op off Linux, when opted out, when one is already loaded, or when none is installed.
    """
    if (not sys.platform.startswith("linux") or os.environ.get("SIMCLR_NO_ALLOCATOR") == "1"
            or os.environ.get("SIMCLR_ALLOCATOR") or loaded()):
        return
    library = find_library()
    if library is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD", "")]))
    env["SIMCLR_ALLOCATOR"] = os.path.basename(library)
    if "jemalloc" in library:
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "simclr", *argv], env)
