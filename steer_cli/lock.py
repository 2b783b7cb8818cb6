"""One writer per output: an exclusive advisory lock (``fcntl.flock``) held for a whole command.

A directory that a command fills (a training run, an eval output) is locked through
``<dir>/.steer.lock``; an output that is replaced as a whole (an extract/merge file, a folded
checkpoint directory) through a sibling ``.<name>.lock`` in its parent. The OS drops the lock
when the process dies, SIGKILL included, so a crash never leaves a stale lock: a lock file left
behind by a killed process is just a file, and the next command takes it over.

The holder writes its pid, host, start time and command line into the file after locking, so
a second writer can say who holds the output. On release the holder deletes the file while it
still holds the lock; a process that opened the old file meanwhile notices (the path no longer
names what it locked) and starts over, so deleting never lets two processes in at once.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from steer_cli.errors import SteerError, WriteError, say
from steer_cli.faults import write_fault

LOCK_NAME = ".steer.lock"  # inside a locked directory; other code ignores it


def is_lock_file(path: Path) -> bool:
    return path.name == LOCK_NAME


@contextlib.contextmanager
def hold_dir(path: str | os.PathLike, what: str, *, hint: str = "another --output-dir") -> Iterator[Path]:
    """Lock directory ``path`` (created if missing) for this process until the block ends.

    ``what`` names the command in other processes' errors ("steer train"). A directory this call
    created is removed again on exit when nothing but the lock file went into it.
    """
    path = Path(path)
    with _directory(path), _hold(path / LOCK_NAME, path, what, hint):
        yield path


@contextlib.contextmanager
def hold_output(path: str | os.PathLike, what: str, *, hint: str = "another -o") -> Iterator[Path]:
    """Lock an output that is written as a whole (a file, or a directory renamed into place)
    through ``.<name>.lock`` beside it. A missing parent directory is created (and removed again
    when nothing went into it)."""
    path = Path(path)
    with _directory(path.parent), _hold(path.with_name(f".{path.name}.lock"), path, what, hint):
        yield path


@contextlib.contextmanager
def _directory(path: Path) -> Iterator[None]:
    """Create directory ``path`` if missing; on exit remove those this created that are empty."""
    missing = [p for p in [path, *path.parents] if not p.exists()]  # innermost first
    _make_dirs(path)
    try:
        yield
    finally:
        for d in missing:
            with contextlib.suppress(OSError):
                d.rmdir()


def _make_dirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SteerError(f"output path {path} exists and is not a directory") from None
    except OSError as err:
        raise WriteError.from_os(path, err) from None


@contextlib.contextmanager
def _hold(lock_path: Path, target: Path, what: str, hint: str) -> Iterator[None]:
    fd = _acquire(lock_path, target, hint)
    if fd is None:  # the file system cannot lock: go on unprotected (said on stderr)
        yield
        return
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": _command_line()}
        try:  # a disk too full for these few bytes fails the command's first write: fail here
            fault = write_fault(lock_path)
            if fault is not None:
                raise fault
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as err:
            raise WriteError.from_os(lock_path, err) from None
        yield
    finally:
        # Delete while still holding the lock; see the module docstring.
        with contextlib.suppress(OSError):
            if _same_file(fd, lock_path):
                lock_path.unlink()
        os.close(fd)


def _acquire(lock_path: Path, target: Path, hint: str) -> int | None:
    for _ in range(100):  # each retry means the holder deleted the file just now
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the directory went away with its previous holder's exit
            _make_dirs(lock_path.parent)
            continue
        except OSError as err:
            raise WriteError.from_os(lock_path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _holder(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SteerError(f"{target} is in use by {holder}; wait for it to finish or use {hint}") from None
            say(f"note: cannot lock {target} ({err.strerror or err}); nothing stops a second command "
                  "from writing there at the same time")
            return None
        if _same_file(fd, lock_path):
            return fd
        os.close(fd)  # we locked a file its holder had deleted: take the new one
    raise SteerError(f"cannot lock {target}: {lock_path} keeps changing")


def _command_line() -> str:
    prog = os.path.basename(sys.argv[0] or "python")
    if prog in ("__main__.py", "steer_cli"):  # python -m steer_cli
        prog = "steer"
    text = " ".join([prog, *sys.argv[1:]]).replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process (it has not said which yet)"
    text = f"{info.get('what', 'another steer command')} (pid {info['pid']} on host {info.get('host', '?')}"
    if info.get("started"):
        text += f", started {info['started']}"
    if info.get("command"):
        text += f": {info['command']}"
    return text + ")"
