"""An evaluation output directory: checked before anything is written, initialised, and the
per-(benchmark, seed) results files, each written whole so a re-run can skip finished ones (the
shards they are merged from: ``shards``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from steer_cli.data.records import Problem
from steer_cli.errors import SteerError
from steer_cli.io import atomic_path, atomic_write_json, atomic_write_text, clear_dir, writing
from steer_cli.lock import is_lock_file
from steer_cli.runs import is_training_run
from steer_cli.settings import Settings

SUMMARY_KIND = "steer-eval"
TARGET_KIND = "steer-eval-target"
FORMAT_VERSION = 1


def is_new_output_dir(out: Path) -> bool:
    """True where ``out`` does not exist or holds only our lock file; a one-line error where it is a
    file. (Shared with the studies' output directories.)"""
    if out.exists() and not out.is_dir():
        raise SteerError(f"output path {out} exists and is not a directory")
    return not out.exists() or not any(not is_lock_file(p) for p in out.iterdir())


def identity_changes(previous: dict[str, Any], ident: dict[str, Any], shown: int) -> str:
    """The first ``shown`` keys whose values differ, as 'key: old -> new; ...' ('' when none)."""
    diffs = [k for k in sorted(set(previous) | set(ident)) if previous.get(k) != ident.get(k)]
    return "; ".join(f"{k}: {previous.get(k)!r} -> {ident.get(k)!r}" for k in diffs[:shown])


def check_output_dir(out: Path, ident: dict[str, Any], overwrite: bool) -> str:
    """"new", "continue" or "overwrite"; raises (writing nothing) where the directory is not ours or
    holds another protocol's results."""
    if is_new_output_dir(out):
        return "new"
    target_file = out / "target.json"
    if target_file.is_file():
        try:
            previous = json.loads(target_file.read_text()).get("identity", {})
        except (OSError, json.JSONDecodeError):
            previous = None
        if overwrite:
            return "overwrite"
        if previous is None:
            raise SteerError(f"{target_file} is unreadable; pass --overwrite to redo the evaluation in {out}")
        shown = identity_changes(previous, ident, 10)
        if shown:
            raise SteerError(f"{out} holds an evaluation with other settings ({shown}); pass --overwrite to "
                             "redo it, or another --output-dir")
        return "continue"
    if is_training_run(out):
        raise SteerError(f"{out} is a training run, not an evaluation output; choose another --output-dir")
    if not (out / "settings.yaml").is_file():
        raise SteerError(f"output directory {out} exists and is not a steer evaluation (no settings.yaml); "
                         "refusing to write into it, choose another --output-dir")
    if not overwrite:
        raise SteerError(f"output directory {out} holds an incomplete evaluation; pass --overwrite to redo it")
    return "overwrite"


def init_output_dir(out: Path, mode: str, settings: Settings, target_doc: dict[str, Any]) -> None:
    with writing(out):  # an OS error: WriteError (exit 74)
        if mode == "overwrite":
            clear_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "settings.yaml", settings.to_yaml())
        atomic_write_json(out / "target.json", target_doc)


def results_path(out: Path, bench: str, seed: int) -> Path:
    return out / f"seed-{seed}" / f"{bench}.jsonl"


def read_results(path: Path, problems: Sequence[Problem], samples: int) -> Optional[list[list[bool]]]:
    """The correctness matrix of a finished results file, or None if it is missing, torn or stale
    (other problems or another number of samples)."""
    if not path.is_file():
        return None
    try:
        lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if len(lines) != len(problems):
        return None
    matrix = []
    for line, p in zip(lines, problems):
        s = line.get("samples") if isinstance(line, dict) else None
        if line.get("id") != p.id or not isinstance(s, list) or len(s) != samples:
            return None
        matrix.append([bool(x.get("correct")) for x in s])
    return matrix


def write_results(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")


def abs_path(path: Optional[Path]) -> Optional[str]:
    """Absolute paths in result files: they are read from other directories (``steer report``)."""
    return str(path.resolve()) if path is not None else None
