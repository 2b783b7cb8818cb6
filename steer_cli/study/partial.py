"""A long study's work in progress, so a stopped study continues where it stopped.

Two files in the output directory: ``samples.jsonl`` (one line per finished unit of work, appended
and flushed) and ``partial.safetensors`` (running sums, written atomically after the lines of a
unit, with the number of units they include). On resume the sums say how many units are done; any
lines past that count (written just before a stop) are dropped, so lines and sums always agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steer_cli.io import append_jsonl, atomic_path, atomic_write_text

LINES_FILE = "samples.jsonl"
PARTIAL_FILE = "partial.safetensors"


def write_partial(out: Path, tensors: dict[str, torch.Tensor], units: int, meta: Optional[dict[str, Any]] = None) -> None:
    encoded = {"units": json.dumps(units), "meta": json.dumps(meta or {})}
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(out / PARTIAL_FILE) as tmp:
        save_file(data, str(tmp), metadata=encoded)


def read_partial(out: Path) -> tuple[dict[str, torch.Tensor], int, dict[str, Any]]:
    """(sums, units done, meta); nothing done yet gives ({}, 0, {})."""
    path = out / PARTIAL_FILE
    if not path.is_file():
        return {}, 0, {}
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, int(json.loads(raw.get("units", "0"))), json.loads(raw.get("meta", "{}"))


def append_lines(out: Path, lines: list[dict[str, Any]]) -> None:
    for line in lines:
        append_jsonl(out / LINES_FILE, line)


def read_lines(out: Path, units: Optional[int] = None) -> list[dict[str, Any]]:
    """The finished lines; with ``units``, only lines of the first ``units`` units (``"unit"``
    field), rewriting the file when it holds more (a stop between the lines and the sums)."""
    path = out / LINES_FILE
    if not path.is_file():
        return []
    lines = []
    torn = False
    for text in path.read_text(encoding="utf-8").splitlines():
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            torn = True  # a line torn by a kill: it and what follows are redone
            break
    if units is not None or torn:
        kept = [x for x in lines if units is None or int(x.get("unit", 0)) < units]
        if torn or len(kept) != len(lines):
            atomic_write_text(path, "".join(json.dumps(x) + "\n" for x in kept))
        lines = kept
    return lines
