"""The one exception type for errors a user can cause and fix."""


class SimCLRError(Exception):
    """A user-fixable problem (bad path, corrupt file, bad setting).

    The message is one line naming the problem and the fix; the CLI prints it without a
    traceback and exits non-zero.
    """
