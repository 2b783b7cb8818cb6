"""User-facing errors: one line that says what is wrong and what to do; the CLI exits with code 2."""

from __future__ import annotations


class SteerError(Exception):
    """An error caused by the user's input (flags, files, settings), not by a bug in steer.

    The CLI prints ``str(err)`` on one line (no traceback) and exits with code 2. Raise it with a
    message that names the thing at fault and what to do about it.
    """

    exit_code = 2


class Interrupted(BaseException):
    """The command stopped on a scheduler's signal (SIGTERM/SIGUSR1) after keeping what it had
    finished; running the same command again continues (``steer train`` with ``--resume``).

    The CLI prints ``stopped: <message>`` on one line and exits with code 75 (``EXIT_PREEMPTED``).
    A BaseException, like KeyboardInterrupt: raised from a signal handler (``steer eval``), it must
    not be swallowed by an ``except Exception`` wherever it lands.
    """

    exit_code = 75
