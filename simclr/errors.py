"""The one exception type for errors a user can cause and fix."""

from __future__ import annotations

from pathlib import Path


class SimCLRError(Exception):
    """A user-fixable problem (bad path, corrupt file, bad setting).

    The message is one line naming the problem and the fix; the CLI prints it without a
    traceback and exits non-zero.
    """


def corrupt_error(path: str | Path, err: BaseException) -> SimCLRError:
    """The one-line error for a damaged file, with the exception's first line as detail."""
    detail = str(err).strip() or type(err).__name__
    detail = detail.splitlines()[0][:120]
    return SimCLRError(f"{path} is corrupt or truncated ({detail}): delete it and download again")
