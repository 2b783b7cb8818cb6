"""Stopping on a scheduler's signal: SIGTERM (Kubernetes, SLURM, torchrun's agent) and SIGUSR1
(SLURM's ``--signal=USR1@<seconds>``).

``StopSignals`` records the first such signal; the command acts on it where it is safe (``steer
train`` at its check points, see ``Trainer``). From that first signal a deadline runs: past it
the process exits at once with ``EXIT_PREEMPTED``, which loses nothing already on disk since
every write is atomic. Later signals are ignored: under SLURM + torchrun a worker gets the
scheduler's signal and then the agent's copy of it, and a duplicate must not cut a save short.
Before exiting at the deadline the process ends the helper processes it started (``processes``).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from steer_cli.errors import Interrupted, say
from steer_cli.processes import end_started

EXIT_PREEMPTED = Interrupted.exit_code  # 75, sysexits' EX_TEMPFAIL: stopped; the same command continues
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_first: list[int] = []  # the command's first stop signal, whichever StopSignals (nested ones) took it
_depth = [0]  # StopSignals active now; the outermost starts a command afresh


class StopSignals:
    """Context manager: while active, SIGTERM/SIGUSR1 set ``requested`` instead of ending the process.

    ``deadline``: seconds from the first signal (or from ``start_deadline()``) after which the
    process exits with ``EXIT_PREEMPTED`` and ``deadline_message`` on stderr. ``interrupt``: raise
    ``Interrupted("<signal>: <interrupt>")`` at once from the first signal instead (for commands
    whose finished work is already on disk, like ``steer eval``). Outside the main thread signal
    handlers cannot be set; then this does nothing.
    """

    def __init__(self, deadline: float | None, deadline_message: str = "", *, interrupt: str | None = None) -> None:
        self.deadline = deadline
        self.deadline_message = deadline_message
        self.interrupt = interrupt
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a signal to another process"

    def __enter__(self) -> StopSignals:
        if _depth[0] == 0:
            _first.clear()
        _depth[0] += 1
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        _depth[0] -= 1
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._timer is not None:
            self._timer.cancel()

    def _handle(self, signum: int, frame: Any) -> None:
        # A repeated signal is ignored (see the module docstring), also one that reaches an outer
        # StopSignals (the CLI's) while the command winds down from an inner one's.
        if self.signum is None and not _first:
            _first.append(signum)
            self.signum = signum
            self.start_deadline()
            if self.interrupt is not None:
                raise Interrupted(f"{self.signal_name}: {self.interrupt}")

    def start_deadline(self) -> None:
        """Start the deadline (once): the first signal does; so does a process that learns of a
        signal from another one."""
        if self._timer is None and self.deadline is not None:
            self._timer = threading.Timer(self.deadline, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        say(f"stopped: {self.deadline_message or 'deadline after the stop signal passed'}")
        end_started(grace=1.0)
        os._exit(EXIT_PREEMPTED)
