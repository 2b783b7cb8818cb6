"""Fault injection for the kill-, signal- and lock-tests.

``STEER_FAULT=<point>@<step>[:<action>]`` (several, comma-separated) acts when ``steer train``
reaches that point of that step (1-based): ``generate`` (rollouts done, update not started),
``update`` (gradients computed, optimizer not stepped) or ``checkpoint`` (checkpoint files
written, not yet renamed into place). Actions:

- ``kill`` (the default): SIGKILL itself;
- ``term`` / ``usr1``: send itself SIGTERM / SIGUSR1 and go on (what a scheduler does);
- ``hang``: block until something ends the process;
- ``wait=<file>``: create ``<file>.reached``, then block until ``<file>`` exists.

``write@<pattern>[:<ERRNO>]`` makes every atomic write (``steer_cli.io``) whose target path matches
the ``fnmatch`` pattern fail with that OS error (default ``ENOSPC``: the disk is full) once its
temporary file is written, as a full disk would mid-write: ``write@*/checkpoint-4``,
``write@*metrics.jsonl:EIO``. It acts in every command that sees the variable, any subcommand.

``STEER_FAULT_RANK=<r>`` limits faults to the process of that rank (``RANK``). Under torchrun
they act only in the first attempt, so workers it restarts run clean. Unset, a point costs one
environment lookup.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
import threading
import time
from pathlib import Path

POINTS = ("generate", "update", "checkpoint")


def maybe_die(point: str, step: int) -> None:
    for name, at, action in _faults():
        if name == point and at.isdigit() and int(at) == step:
            _act(action or "kill")


def write_fault(path: str | os.PathLike) -> OSError | None:
    """The OS error a ``write@<pattern>`` fault injects into the write of ``path``, if any."""
    for name, pattern, code in _faults():
        if name == "write" and fnmatch.fnmatchcase(str(path), pattern):
            number = getattr(errno, code or "ENOSPC", None)
            if not isinstance(number, int):
                raise ValueError(f"STEER_FAULT: unknown errno name {code!r}")
            return OSError(number, os.strerror(number), str(path))
    return None


def _faults() -> list[tuple[str, str, str]]:
    """(point, step or pattern, action) of each fault that acts in this process."""
    spec = os.environ.get("STEER_FAULT")
    if not spec:
        return []
    rank = os.environ.get("STEER_FAULT_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return []
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return []
    found = []
    for item in spec.split(","):
        where, _, action = item.strip().partition(":")
        name, _, at = where.partition("@")
        found.append((name, at, action))
    return found


def _act(action: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action in ("term", "usr1"):
        os.kill(os.getpid(), signal.SIGTERM if action == "term" else signal.SIGUSR1)
    elif action == "hang":
        threading.Event().wait()
    elif action.startswith("wait="):
        gate = Path(action[len("wait="):])
        Path(f"{gate}.reached").write_text(str(os.getpid()))
        while not gate.exists():  # a test opens the gate; polling keeps signals deliverable
            time.sleep(0.05)
    else:
        raise ValueError(f"STEER_FAULT: unknown action {action!r}")
