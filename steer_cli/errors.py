"""User-facing errors: one line that says what is wrong and what to do; the CLI exits with code 2
(input), 74 (a write the OS refused) or 75 (stopped by a signal)."""

from __future__ import annotations

import errno as errnos
import os
import sys


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


class WriteError(Exception):
    """A write failed in the OS: the disk or a quota is full, an I/O error, a read-only file system.

    Raised by the atomic writers (``steer_cli.io``) with one line naming the path and the error.
    Nothing written earlier was removed and no half-written file is left under a final name, so
    the same command (``steer train`` with ``--resume``) continues once the cause is gone. The CLI
    prints ``error: <message>`` (no traceback) and exits with code 74 (``EX_IOERR``). Not a
    SteerError: a requeue script can tell "fix the disk and retry" from "fix the command".
    """

    exit_code = 74

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.path = path  # the file or directory that could not be written
        self.errno = errno
        self.reason = reason  # the OS's words: "No space left on device"

    @classmethod
    def from_os(cls, path: str | os.PathLike, err: OSError, part: str | None = None) -> "WriteError":
        """``cannot write <path> (<part>): <the OS's words> (<ERRNO>)``."""
        reason = err.strerror or str(err)
        name = errnos.errorcode.get(err.errno) if isinstance(err.errno, int) else None
        where = f"{path} ({part})" if part else f"{path}"
        return cls(f"cannot write {where}: {reason}" + (f" ({name})" if name else ""),
                   path=str(path), errno=err.errno, reason=reason)

    def with_hint(self, hint: str) -> "WriteError":
        """The same error with what the user can do about it appended (the command knows best)."""
        return WriteError(f"{self}; {hint}", path=self.path, errno=self.errno, reason=self.reason)


def say(line: str) -> None:
    """Print one line on stderr in a single write: under torchrun every process may print the same
    line at once, and print()'s separate write of the newline lets two lines run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
