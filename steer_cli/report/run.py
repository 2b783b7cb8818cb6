"""`steer report`: the paper's tables (and plots) from the results under some directories."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from steer_cli.errors import SteerError
from steer_cli.report import plots as report_plots
from steer_cli.report import tables as rt
from steer_cli.report.collect import Results, collect


@dataclass
class ReportOutput:
    text: str
    plots: list[Path]
    notes: list[str]


FORMATS = ("github", "latex", "csv")


def report(paths: Optional[Sequence[str | Path]] = None, *, fmt: str = "github",
           plot_dir: Optional[str | Path] = None) -> ReportOutput:
    """Tables (and optionally PNGs) for the results under ``paths`` (default: runs/)."""
    if fmt not in FORMATS:
        raise SteerError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    notes = []
    if not paths:
        paths = ["runs"]
        if not Path("runs").is_dir():
            raise SteerError("no directory given and no runs/ here; pass directories holding eval or training outputs")
        notes.append("reading runs/")
    results = collect(paths)
    notes.extend(f"skipped {s}" for s in results.skipped)
    if results.empty:
        where = ", ".join(str(p) for p in paths)
        skipped = ""
        if results.skipped:  # say why files that look like results were not read
            more = len(results.skipped) - 1
            skipped = f"; skipped {results.skipped[0]}" + (f" and {more} more" if more else "")
        raise SteerError(f"no results under {where} (looked for summary.json, metrics.jsonl, bench JSON){skipped}")
    tables = rt.build_tables(results)
    text = rt.render_tables(tables, fmt)
    plots: list[Path] = []
    if plot_dir is not None:
        plots = write_plots(results, Path(plot_dir))
    return ReportOutput(text, plots, notes)


def _file_label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def write_plots(results: Results, out_dir: Path) -> list[Path]:
    """Training curves per run, accuracy bars per benchmark and accuracy against steering scale;
    returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    used: set[str] = set()
    for run in results.runs:
        if not run.metrics:
            continue
        name = f"train-{_file_label(run.label)}"
        while name in used:
            name += "_"
        used.add(name)
        title = " · ".join(str(x) for x in (run.label, run.model, run.setup) if x)
        written.append(report_plots.plot_training_run(run.metrics, title, out_dir / f"{name}.png"))
    bars = rt.accuracy_series(results)
    if bars is not None:
        benchmarks, series = bars
        written.append(report_plots.plot_accuracy_bars(benchmarks, series, out_dir / "accuracy.png",
                                                title="accuracy per benchmark (%, mean ± std over seeds)"))
    curves = rt.scale_series(results)
    if curves:
        written.append(report_plots.plot_scale_sweep(curves, out_dir / "scale.png"))
    return written
