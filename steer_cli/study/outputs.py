"""Output directories of the teacher-forced and file-only studies (seeds, adaptive) and their
progress bar.

A study directory holds ``settings.yaml``, ``figures/*.png``, the study's own partial files, and
``study.json`` last. A finished study is never replaced without ``--overwrite``; a long one keeps
what it finished in its partial files, and ``--resume`` continues from them.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from steer_cli.errors import SteerError, say
from steer_cli.io import atomic_write_text
from steer_cli.study.record import STUDY_FILE

FIGURES_DIR = "figures"


def default_output_dir(runs_dir: str | Path, experiment: str) -> Path:
    return Path(runs_dir) / "study" / experiment


def prepare_output_dir(out: str | Path, *, overwrite: bool, resume: bool = False,
                       partial: Iterable[str] = ()) -> Path:
    """Check ``out`` may be written, before any work: a finished study needs ``--overwrite``;
    partial files of an unfinished one need ``--resume`` (continue) or ``--overwrite`` (start
    again, deleting them). Returns the directory (created)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SteerError(f"--output-dir {out} is a file; give a directory")
    partial = [out / name for name in partial]
    if overwrite and resume:
        raise SteerError("--overwrite and --resume exclude each other")
    if (out / STUDY_FILE).exists() and not overwrite:
        raise SteerError(f"{out} already holds a finished study ({STUDY_FILE}); pass --overwrite to replace it "
                         "or choose another --output-dir")
    left = [p for p in partial if p.exists()]
    if left and not (overwrite or resume):
        raise SteerError(f"{out} holds an unfinished study ({left[0].name}); pass --resume to continue it or "
                         "--overwrite to start again")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for p in left:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return out


def write_settings(out: Path, settings: Any) -> None:
    atomic_write_text(out / "settings.yaml", settings.to_yaml())


def copy_figures(figures: Iterable[Path], plot_dir: Optional[str | Path]) -> list[Path]:
    """Copy the study's figures into ``--plot DIR`` as well (they always stay in figures/)."""
    if plot_dir is None:
        return []
    target = Path(plot_dir)
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in figures:
        dest = target / f.name
        shutil.copyfile(f, dest)
        copied.append(dest)
    return copied


class Progress:
    """One bar on stderr while a study works: drawn on a terminal, a line per tenth of the work
    otherwise, nothing when ``quiet``. The bar starts at the first ``update`` (when the total is
    known); ``update(done, total)`` may be passed as a ``progress`` callback."""

    def __init__(self, description: str, *, unit: str = "", quiet: bool = False) -> None:
        self.description, self.unit, self.quiet = description, unit, quiet
        self.total = 0
        self._bar: Any = None
        self._task: Any = None
        self._last_tenth = -1

    def __enter__(self) -> "Progress":
        return self

    def _line(self, done: int) -> None:
        say(f"{self.description}: {done}/{self.total} {self.unit}".rstrip())

    def update(self, done: int, total: Optional[int] = None) -> None:
        if self.quiet:
            return
        if total is not None and total != self.total:
            self.total = total
            if self._bar is not None:
                self._bar.update(self._task, total=total)
        if self.total <= 0:
            return
        if self._bar is None and sys.stderr.isatty():
            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn(self.unit), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
            return
        tenth = done * 10 // self.total
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self._line(done)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
