"""The accuracy studies' figures: curves against a grid axis with reference lines (layers,
magnitude) and heatmaps (pairs, transfer), one panel per benchmark plus the Average. Accuracies
are drawn in percent; missing values (None) are gaps or blank cells."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from matplotlib import colormaps
from matplotlib.colors import LinearSegmentedColormap, TwoSlopeNorm

from steer_cli.figures import integer_ticks, new_figure, save_png

AVERAGE = "average"
# Blue (worse) - white (no change) - orange (better), centred at 0 (the reference's relative maps).
DIVERGING = LinearSegmentedColormap.from_list("steer-bwo", ["#2b6cb0", "#ffffff", "#dd6b20"])
_REF_STYLES = ("--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)))


def _pct(values: Sequence[Optional[float]]) -> list[float]:
    return [math.nan if v is None else 100.0 * v for v in values]


def panels(benchmarks: Sequence[str]) -> list[str]:
    """The panels of a figure: each benchmark, then the Average (alone when there is one benchmark)."""
    return [AVERAGE] if len(benchmarks) <= 1 else [*benchmarks, AVERAGE]


def _title(name: str, displays: Mapping[str, str]) -> str:
    return "Mean Acc." if name == AVERAGE else displays.get(name, name)


def curves(path: Path, x: Sequence[float], series: Mapping[str, Mapping[str, Sequence[Optional[float]]]],
           refs: Mapping[str, Mapping[str, Optional[float]]], benchmarks: Sequence[str], *, xlabel: str,
           ylabel: str = "accuracy (%)", title: str = "", displays: Mapping[str, str] = {},
           percent: bool = True, integer_x: bool = False, log_x: bool = False) -> Path:
    """One panel per benchmark (+ Average): each series (name -> {panel: values over x}) as a line
    with markers, each reference (label -> {panel: value}) as a horizontal line."""
    names = panels(benchmarks)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = new_figure(4.6 * cols, 3.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    scale = _pct if percent else (lambda vs: [math.nan if v is None else v for v in vs])
    colors = colormaps["tab10"]
    for ax, name in zip(axes, names):
        for k, (label, values) in enumerate(series.items()):
            ax.plot(list(x), scale(values.get(name, [None] * len(x))), marker="o", color=colors(k), label=label)
        for k, (label, values) in enumerate(refs.items()):
            v = values.get(name)
            if v is not None:
                ax.axhline(100.0 * v if percent else v, color=colors(k + len(series)),
                           linestyle=_REF_STYLES[k % len(_REF_STYLES)], linewidth=1.2, label=label)
        ax.set(title=_title(name, displays), xlabel=xlabel, ylabel=ylabel)
        if integer_x:
            integer_ticks(ax, "x")
        if log_x:
            ax.set_xscale("symlog", linthresh=0.1)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8, loc="best")
    if title:
        suptitle(fig, title)
    return save_png(fig, path)


def heatmap(path: Path, matrices: Mapping[str, Sequence[Sequence[Optional[float]]]], *, rows: Sequence[str],
            cols: Sequence[str], title: str = "", xlabel: str = "", ylabel: str = "",
            displays: Mapping[str, str] = {}, diverging: bool = False, percent: bool = True,
            cross_above: Optional[float] = None, annotate: bool = True) -> Path:
    """One heatmap panel per entry of ``matrices`` (panel name -> rows x cols values). ``diverging``:
    blue-white-orange centred at 0; ``cross_above``: an X on cells above it (the reference marks
    pairs past 0.99 of the all-layer run)."""
    names = list(matrices)
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = new_figure(max(4.0, 0.55 * len(cols) + 2.6) * ncols, max(3.2, 0.5 * len(rows) + 2.0) * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        grid = [[math.nan if v is None else (100.0 * v if percent and not diverging else v) for v in row]
                for row in matrices[name]]
        finite = [v for row in grid for v in row if not math.isnan(v)]
        if diverging:
            span = max([abs(v) for v in finite] + [1e-6])
            im = ax.imshow(grid, cmap=DIVERGING, norm=TwoSlopeNorm(0.0, -span, span), aspect="auto")
        else:
            im = ax.imshow(grid, cmap=colormaps["viridis"], aspect="auto")
        ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=45 if len(str(cols[-1])) > 3 else 0)
        ax.set_yticks(range(len(rows)), [str(r) for r in rows])
        ax.set(title=_title(name, displays), xlabel=xlabel, ylabel=ylabel)
        fig.colorbar(im, ax=ax, shrink=0.8)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if math.isnan(v):
                    continue
                if cross_above is not None and v > cross_above:
                    ax.text(j, i, "X", ha="center", va="center", fontsize=11, fontweight="bold")
                elif annotate and len(rows) * len(cols) <= 144:
                    ax.text(j, i, f"{v:.2f}" if diverging or not percent else f"{v:.1f}", ha="center",
                            va="center", fontsize=7)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if title:
        suptitle(fig, title)
    return save_png(fig, path)


def benchmark_displays(summaries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Benchmark name -> display name, from eval summaries."""
    out: dict[str, str] = {}
    for s in summaries:
        for name, entry in s.get("benchmarks", {}).items():
            out.setdefault(name, entry.get("display", name))
    return out


def suptitle(fig: Any, title: str) -> None:
    """The figure's title, wrapped to its width: a long one (transfer's) was cut at both edges."""
    chars = max(20, int(fig.get_figwidth() * 9))  # ~9 characters per inch at the default 12 pt
    fig.suptitle(textwrap.fill(title, chars))
