"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

A process killed mid-write leaves the previous file (or none) in place, never a torn one. A write
the OS refuses (a full disk or quota, an I/O error, a read-only file system) raises ``WriteError``
naming the target, whatever library did the writing: the one place where OS errors on writes
become the CLI's one-line exit 74. The temporary file goes, the previous file stays.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from steer_cli.errors import SteerError, WriteError
from steer_cli.faults import write_fault
from steer_cli.lock import LOCK_NAME

# Libraries that wrap the OS error in their own exception name its number in the text:
# safetensors "I/O error: No space left on device (os error 28)", "[Errno 28] ...".
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")
_FULL_BELOW_BYTES = 1 << 20  # free space under this after a failed write: the disk filled up


def os_error(exc: BaseException, directory: str | os.PathLike | None = None) -> OSError | None:
    """The OS error behind a failed write, or None when it was not one.

    ``exc`` itself, one in its chain (torch's writer raises RuntimeError over the file object's
    OSError), one a library names in its message (safetensors), or, for an error that says nothing
    (``torch.save`` to a path: "unexpected pos"), a full disk under ``directory`` right after it.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        m = _ERRNO_IN_TEXT.search(str(e))
        if m:
            number = int(m.group(1) or m.group(2))
            return OSError(number, os.strerror(number))
        e = e.__cause__ or e.__context__
    if directory is not None and _disk_full(Path(directory)):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def _disk_full(directory: Path) -> bool:
    try:
        st = os.statvfs(next(p for p in (directory, *directory.parents) if p.exists()))
    except (OSError, StopIteration):
        return False
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserved blocks
    return blocks * st.f_frsize < _FULL_BELOW_BYTES


@contextlib.contextmanager
def writing(path: str | os.PathLike, part: str | None = None) -> Iterator[None]:
    """An OS error of the block (however a library wraps it) becomes a ``WriteError`` naming
    ``path``; one from a write nested inside (a file of a directory being written) is renamed to
    ``path`` too, naming that file. A SteerError (bad input) passes unchanged."""
    try:
        yield
    except WriteError as inner:
        sub = _in_temporary(inner.path, path)
        if sub is None:  # it names its own file already
            raise
        err = OSError(inner.errno, inner.reason or str(inner))
        raise WriteError.from_os(path, err, part or sub) from inner
    except SteerError:
        raise
    except Exception as exc:
        err = os_error(exc, Path(path).parent)
        if err is None:
            raise
        raise WriteError.from_os(path, err, part or _part(err.filename, path)) from exc


def _part(filename: Any, path: str | os.PathLike) -> str | None:
    """Where ``filename`` lies inside the directory ``path`` or its temporary directory; else None."""
    if not isinstance(filename, str):
        return None
    with contextlib.suppress(ValueError):
        rel = Path(filename).relative_to(path)
        return str(rel) if rel.parts else None
    return _in_temporary(filename, path)


def _in_temporary(filename: Any, path: str | os.PathLike) -> str | None:
    """Where ``filename`` lies inside the temporary directory (``.<name>.<random>.tmp/``) that
    ``atomic_dir`` renames to ``path``; None elsewhere."""
    if not isinstance(filename, str):
        return None
    p = Path(path)
    try:
        rel = Path(filename).relative_to(p.parent).parts
    except ValueError:
        return None
    if len(rel) > 1 and rel[0].startswith(f".{p.name}.") and rel[0].endswith(".tmp"):
        return str(Path(*rel[1:]))
    return None


def _check_fault(path: Path) -> None:
    err = write_fault(path)
    if err is not None:
        raise err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success rename it over ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            _check_fault(path)
            _fsync_file(tmp_path)
            os.replace(tmp_path, path)
            _fsync_dir(path.parent)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` as a whole.

    An existing ``path`` is moved aside first and deleted only after the new one is in place, so a
    kill at any moment leaves either the old or the new directory (plus a stray temporary one).
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            _check_fault(path)
            for f in tmp.rglob("*"):
                if f.is_file():
                    _fsync_file(f)
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(path, old)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def clear_dir(path: str | os.PathLike, keep: frozenset[str] = frozenset({LOCK_NAME})) -> None:
    """Delete what a directory holds (links are removed, not followed); keep the directory and
    the entries named in ``keep`` (the lock file of the command that clears it)."""
    with writing(path):
        for child in Path(path).iterdir():
            if child.name in keep:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line and flush it to disk (metrics logs survive kills line by line). A
    failed append is cut back off, so no torn line stays behind."""
    line = memoryview((json.dumps(obj) + "\n").encode("utf-8"))
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                err = write_fault(path)
                if err is not None:  # as a full disk does: part of the line gets written
                    os.write(fd, line[:len(line) // 2])
                    raise err
                while line:  # unbuffered: nothing is left to be written after a failure
                    line = line[os.write(fd, line):]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
