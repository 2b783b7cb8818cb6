"""Finding runs on disk: the most recent one under ``runs/``, and every training run under a directory.

Shared by the commands that read a run when none is named (eval, extract, lens) and by the library
modules behind them, so that nothing below the CLI imports from ``steer_cli.cli``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from steer_cli.errors import SteerError
from steer_cli.lock import is_lock_file

CHECKPOINT_DIR_RE = re.compile(r"^(final|checkpoint-\d+)$")


def is_training_run(path: Path) -> bool:
    """A ``steer train`` output directory: settings.yaml plus metrics or checkpoints."""
    if not (path / "settings.yaml").is_file():
        return False
    if (path / "metrics.jsonl").is_file():
        return True
    return any(c.is_dir() and CHECKPOINT_DIR_RE.match(c.name) for c in path.iterdir())


def latest_run(runs_dir: str | Path = "runs", *, kind: str | None = None) -> Path:
    """The most recently modified run directory (one holding settings.yaml) under ``runs_dir``.

    ``kind`` = "train" keeps training runs (they have metrics.jsonl), "eval" keeps eval outputs.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise SteerError(f"no run given and no {root}/ directory here; pass a run directory or file")
    candidates = []
    for settings_file in root.rglob("settings.yaml"):
        run = settings_file.parent
        if kind == "train" and not (run / "metrics.jsonl").exists():
            continue
        if kind == "eval" and not (run / "summary.json").exists():
            continue
        stamp = max((p.stat().st_mtime for p in run.iterdir() if p.is_file() and not is_lock_file(p)), default=0.0)
        candidates.append((stamp, str(run)))
    if not candidates:
        what = {"train": "training run", "eval": "evaluation"}.get(kind or "", "run")
        raise SteerError(f"no {what} found under {root}/; pass a directory or run `steer train` first")
    return Path(max(candidates)[1])


def training_runs_under(root: str | Path) -> list[Path]:
    """Every ``steer train`` output directory under ``root`` (sorted by path), not descending into
    a run (its eval/ and checkpoints hold no further runs) nor into hidden directories."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        path = Path(dirpath)
        if is_training_run(path):
            found.append(path)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)
