"""User-facing errors: one line that says what is wrong and what to do; the CLI exits with code 2."""

from __future__ import annotations


class SteerError(Exception):
    """An error caused by the user's input (flags, files, settings), not by a bug in steer.

    The CLI prints ``str(err)`` on one line (no traceback) and exits with code 2. Raise it with a
    message that names the thing at fault and what to do about it.
    """

    exit_code = 2
