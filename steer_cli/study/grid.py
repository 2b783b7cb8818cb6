"""The grid driver under every accuracy study: many ``steer eval`` cells over one loaded model.

A grid is a list of ``Cell``s (vectors file or none, scale, layer subset, prefill, temperature), all
on one model. ``run_grid`` turns them into evaluation targets, one output directory each
(``<out>/cells/<key>/``, an ordinary eval output with its ``summary.json``), and evaluates them in
one ``evaluate.run.evaluate`` call:

- one model load (hf) or one vLLM engine for the whole grid, never a checkpoint; with hf, cells
  that differ only in their vectors, scale or layers share generation batches (up to
  ``eval.pool_cells`` of them), each row steered by its own cell's entry of a vector bank
  (``evaluate.pooled``); vLLM runs cell after cell, the engine's buffers rewritten between them;
- the same per-sample seeds as ``steer eval``, so a cell's samples are those of ``steer eval`` of
  that configuration;
- every cell's shards are on disk as they finish: a stopped grid (SIGTERM: exit 75) resumes where it
  stopped and a re-run skips finished cells (their results are read back, no model is loaded);
- one progress bar for the whole grid; under torchrun / accelerate launch the shards of all cells
  are dealt to the processes.

API::

    cells = [Cell("pair-0-1", vectors=merged, layers=(0, 1)), Cell("base", temperature=1.0), ...]
    summaries = run_grid(settings, cells, out_dir)     # {cell key: summary.json dict}

``cell_value(summary, bench)`` and ``cell_std`` read a cell's accuracy (``bench`` = a benchmark name
or ``"average"``); ``cell_lengths(cell_dir)`` the mean completion length of its samples.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from steer_cli.data.records import FieldMap
from steer_cli.errors import SteerError
from steer_cli.evaluate.parallel import Coordinator
from steer_cli.evaluate.run import evaluate
from steer_cli.evaluate.targets import Target
from steer_cli.settings import Settings
from steer_cli.vectors.file import load_vectors

CELLS_DIR = "cells"
AVERAGE = "average"
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*(/[A-Za-z0-9][A-Za-z0-9_.+=-]*)?$")


@dataclass(frozen=True)
class Cell:
    """One configuration of a grid: a ``steer eval`` target on the grid's model.

    ``key`` names the cell's directory under ``cells/`` (one ``/`` allowed: transfer groups cells
    by model). ``vectors`` None is the base model. ``layers`` applies only those rows of the file
    (``--layers``), ``scale`` multiplies them (``--scale``). ``prefill`` None means
    ``prompt.prefill`` of the settings; ``temperature`` None the protocol's (0 for the base model,
    1.0 for vectors, unless ``eval.temperature`` says otherwise)."""

    key: str
    vectors: Optional[Path] = None
    scale: float = 1.0
    layers: Optional[tuple[int, ...]] = None
    prefill: Optional[str] = None
    temperature: Optional[float] = None
    run: Optional[Path] = None
    checkpoint: Optional[str] = None

    def __post_init__(self) -> None:
        if not _KEY_RE.match(self.key):
            raise ValueError(f"bad cell key {self.key!r}")


def cell_dir(out: Path, key: str) -> Path:
    return Path(out) / CELLS_DIR / key


def cell_targets(settings: Settings, cells: Sequence[Cell], out: Path) -> list[Target]:
    """The evaluation target of each cell, each with its own output directory."""
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise SteerError(f"two cells of one grid share a key: {sorted(k for k in keys if keys.count(k) > 1)}")
    targets = []
    for c in cells:
        dataset = None
        if c.vectors is not None:
            _, meta = load_vectors(c.vectors)
            dataset = str(meta["dataset"]) if meta.get("dataset") else None
        targets.append(Target(
            label=c.key, setup="steering" if c.vectors is not None else "base", model=settings.model.name,
            output_dir=cell_dir(out, c.key), vectors=Path(c.vectors) if c.vectors is not None else None,
            run=c.run, checkpoint=c.checkpoint, train_dataset=dataset, scale=float(c.scale),
            layers=None if c.layers is None else tuple(int(i) for i in c.layers),
            prefill=c.prefill if c.prefill is not None else settings.prompt.prefill,
            temperature=c.temperature))
    return targets


def run_grid(settings: Settings, cells: Sequence[Cell], out: Path, *, fields: Optional[FieldMap] = None,
             interactive: Optional[bool] = None, coord: Optional[Coordinator] = None) -> dict[str, dict[str, Any]]:
    """Evaluate every cell on ``settings.model.name``; ``{key: summary}`` on the main process
    (``{}`` on the others). Everything is checked before anything is written (``evaluate``)."""
    targets = cell_targets(settings, cells, Path(out))
    summaries = evaluate(settings, targets, fields=fields, interactive=interactive, coord=coord,
                         kept_in=str(Path(out) / CELLS_DIR))
    # evaluate returns every target's summary in target order on the main process, none elsewhere
    return {c.key: s for c, s in zip(cells, summaries)}


# -- reading a cell's results ------------------------------------------------------------------

def cell_value(summary: Optional[dict[str, Any]], bench: str) -> Optional[float]:
    """A cell's accuracy on ``bench`` (a benchmark name, or ``"average"``): the mean over seeds."""
    if summary is None:
        return None
    entry = summary.get("average") if bench == AVERAGE else summary.get("benchmarks", {}).get(bench)
    value = entry.get("mean") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def cell_std(summary: Optional[dict[str, Any]], bench: str) -> Optional[float]:
    if summary is None:
        return None
    entry = summary.get("average") if bench == AVERAGE else summary.get("benchmarks", {}).get(bench)
    value = entry.get("std") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def cell_values(summary: Optional[dict[str, Any]], benches: Sequence[str]) -> dict[str, Optional[float]]:
    """``{bench: accuracy, ..., "average": accuracy}``."""
    return {b: cell_value(summary, b) for b in [*benches, AVERAGE]}


def cell_lengths(directory: Path) -> dict[str, Optional[float]]:
    """Mean completion length (tokens) of a cell's samples: all, correct ones, incorrect ones."""
    every: list[int] = []
    right: list[int] = []
    wrong: list[int] = []
    for path in sorted(Path(directory).glob("seed-*/*.jsonl")):
        for text in path.read_text(encoding="utf-8").splitlines():
            if not text.strip():
                continue
            for s in json.loads(text).get("samples", []):
                n = int(s.get("length", 0))
                every.append(n)
                (right if s.get("correct") else wrong).append(n)

    def mean(xs: list[int]) -> Optional[float]:
        return statistics.fmean(xs) if xs else None

    return {"mean": mean(every), "correct": mean(right), "incorrect": mean(wrong)}


def benchmark_names(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """The benchmarks of a grid's summaries, in their order."""
    names: list[str] = []
    for s in summaries:
        names.extend(n for n in s.get("benchmarks", {}) if n not in names)
    return names
