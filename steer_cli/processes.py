"""No process outlives a steer command.

A command starts helpers: grader workers (children of multiprocessing's fork server), the fork
server and multiprocessing's resource tracker themselves, vLLM engine processes and theirs. Each
owner closes its own (``Grader.close``, ``VLLMBackend.close``); ``reaping()``, around a whole
command, ends whatever is still running when the command returns, on success, on error and on
SIGTERM, and waits for it. Left alone, the fork server and the resource tracker would exit only
once they noticed this process was gone: orphans, and zombies under a PID-1 wrapper that does not
reap. On Linux the command is also a child subreaper (``PR_SET_CHILD_SUBREAPER``), so helpers of
helpers that lose their parent come back to it rather than to PID 1, and are reaped here.

Only processes started during the command are touched: a caller's own children (a test running
``main()`` in-process while it has a subprocess of its own) are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import sys
import threading
from typing import Iterator

import psutil

_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37
_before: set[tuple[int, float]] | None = None  # (pid, start time) of descendants when the command began
_lock = threading.Lock()


@contextlib.contextmanager
def reaping(grace: float = 5.0) -> Iterator[None]:
    """Around a command: when it ends, end what it started that still runs (SIGTERM, then SIGKILL
    after ``grace`` seconds) and reap it."""
    global _before
    outer = _before
    _before = _descendants()
    was_subreaper = _subreaper(True)
    try:
        yield
    finally:
        end_started(grace)
        _subreaper(was_subreaper)
        _before = outer


def end_started(grace: float = 5.0) -> None:
    """End and reap every process started since ``reaping()`` began (all descendants outside it).
    Safe from any thread; also called on the way out of a deadline's ``os._exit``."""
    with _lock:
        before = _before if _before is not None else _descendants()
        _stop_multiprocessing(before, grace)
        left = [p for p in _alive_descendants() if _key(p) not in before]
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, still = psutil.wait_procs(left, timeout=grace)
        for p in still:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(still, timeout=grace)
        _reap_children(before)


def _stop_multiprocessing(before: set[tuple[int, float]], grace: float) -> None:
    """multiprocessing's own children first (its bookkeeping stays right), then its fork server and
    resource tracker, through their own stop so that a later start works."""
    for child in multiprocessing.active_children():
        if child.pid is not None and _key_of(child.pid) not in before:
            with contextlib.suppress(Exception):
                child.terminate()
                child.join(grace)
                if child.is_alive():
                    child.kill()
                    child.join(grace)
    for helper, pid_attr in ((getattr(multiprocessing.forkserver, "_forkserver", None), "_forkserver_pid"),
                             (getattr(multiprocessing.resource_tracker, "_resource_tracker", None), "_pid")):
        pid = getattr(helper, pid_attr, None)
        if pid is not None and _key_of(pid) not in before and hasattr(helper, "_stop"):
            with contextlib.suppress(Exception):
                helper._stop()  # closes its pipe, it exits, waitpid


def _reap_children(before: set[tuple[int, float]]) -> None:
    """waitpid the children that have exited (a subreaper's adopted orphans among them)."""
    for p in psutil.Process().children():
        if _key(p) in before:
            continue
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p.pid, 0)


def _descendants() -> set[tuple[int, float]]:
    return {_key(p) for p in _alive_descendants(include_zombies=True)}


def _alive_descendants(include_zombies: bool = False) -> list[psutil.Process]:
    found = []
    with contextlib.suppress(psutil.Error):
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if include_zombies or p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
    return found


def _key(p: psutil.Process) -> tuple[int, float]:
    try:
        return p.pid, p.create_time()
    except psutil.Error:
        return p.pid, 0.0


def _key_of(pid: int) -> tuple[int, float]:
    try:
        return _key(psutil.Process(pid))
    except psutil.Error:
        return pid, 0.0


def _subreaper(on: bool) -> bool:
    """Set this process's child-subreaper flag (Linux); returns what it was."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        was = ctypes.c_int(0)
        libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
        return bool(was.value)
    except (OSError, AttributeError):
        return False
