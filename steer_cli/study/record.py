"""``study.json``: what a study read (with hashes), how it was set up, and what it found.

    {"kind": "steer-study", "format_version": 1, "experiment": "pairs",
     "inputs": {"vectors": {"path": ..., "sha256": ...}, ...},
     "settings": {...}, "results": {...}}

Written atomically, last, so a directory with ``study.json`` holds a finished study.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from steer_cli.errors import SteerError
from steer_cli.io import atomic_write_json

STUDY_KIND = "steer-study"
STUDY_FORMAT_VERSION = 1
STUDY_FILE = "study.json"
_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (sorted relative paths and contents)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def describe_input(path: str | Path) -> dict[str, str]:
    """``{"path", "sha256"}`` of an input file or directory (hub ids are recorded as given)."""
    p = Path(path)
    if not p.exists():
        return {"path": str(path), "sha256": ""}
    return {"path": str(p.resolve()), "sha256": file_sha256(p)}


def write_study(output_dir: str | Path, experiment: str, *, inputs: Mapping[str, Any],
                settings: Mapping[str, Any], results: Mapping[str, Any]) -> Path:
    """Write ``<output_dir>/study.json``; ``inputs`` values are paths (hashed here) or ready dicts."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    described = {k: (v if isinstance(v, Mapping) else
                     [describe_input(x) for x in v] if isinstance(v, (list, tuple)) else describe_input(v))
                 for k, v in inputs.items()}
    doc = {"kind": STUDY_KIND, "format_version": STUDY_FORMAT_VERSION, "experiment": experiment,
           "inputs": described, "settings": dict(settings), "results": dict(results)}
    path = out / STUDY_FILE
    atomic_write_json(path, doc)
    return path


def read_study(path: str | Path, experiment: str | None = None) -> dict[str, Any]:
    """Read a ``study.json`` (or the one in a directory); refuse another kind or experiment."""
    p = Path(path)
    if p.is_dir():
        p = p / STUDY_FILE
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise SteerError(f"{p} does not exist; give a study output directory or its study.json") from None
    except (OSError, ValueError) as err:
        raise SteerError(f"cannot read {p}: {err}") from None
    if not isinstance(doc, dict) or doc.get("kind") != STUDY_KIND:
        raise SteerError(f"{p} is not a steer study.json (kind {doc.get('kind') if isinstance(doc, dict) else None!r})")
    if experiment and doc.get("experiment") != experiment:
        raise SteerError(f"{p} is a '{doc.get('experiment')}' study; this needs a '{experiment}' study")
    return doc
