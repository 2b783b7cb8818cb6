"""A directory's manifest: every file's size and sha256, so a reader can tell a whole directory
from one cut short (a node that died mid-copy on a file system without atomic rename, a quota hit,
a bad disk) before trusting it.

``manifest.json`` is written last, into the directory's temporary name, before the rename that
makes it final (``io.atomic_dir``); so where the rename is atomic a directory under its final name
always has one, and where it is not, a file missing or short shows against it.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
KIND = "steer-manifest"
VERSION = 1
_CHUNK = 8 << 20  # hashlib releases the GIL on large updates: files hash in parallel threads


def write_manifest(directory: Path) -> dict[str, Any]:
    """Write ``directory/manifest.json`` listing every other file below it; returns the document."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p != directory / MANIFEST_NAME)
    rel = [p.relative_to(directory).as_posix() for p in files]
    digests = _sha256_all(files)
    doc = {"kind": KIND, "version": VERSION,
           "files": {r: {"size": p.stat().st_size, "sha256": d} for r, p, d in zip(rel, files, digests)}}
    (directory / MANIFEST_NAME).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc


def has_manifest(directory: Path) -> bool:
    return (directory / MANIFEST_NAME).exists()


def manifest_damage(directory: Path) -> str | None:
    """Why ``directory`` differs from its manifest (the first file missing, of another size or
    other contents; or the manifest itself unreadable), or None when every listed file matches."""
    try:
        doc = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = doc["files"]
        if doc.get("kind") != KIND or not isinstance(files, dict):
            raise ValueError
        listed = [(str(r), int(v["size"]), str(v["sha256"])) for r, v in files.items()]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST_NAME} is unreadable"
    paths = []
    for rel, size, _ in listed:
        path = directory / rel
        try:
            actual = path.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if actual != size:
            return f"{rel} has {actual} of {size} bytes" + (" (cut short)" if actual < size else "")
        paths.append(path)
    try:
        digests = _sha256_all(paths)
    except OSError as err:
        return f"a file cannot be read ({err.strerror or err})"
    for (rel, _, want), got in zip(listed, digests):
        if got != want:
            return f"{rel} does not match its sha256"
    return None


def _sha256_all(paths: list[Path]) -> list[str]:
    if len(paths) <= 1:
        return [_sha256(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(_sha256, paths))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
