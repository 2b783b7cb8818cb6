"""Shared pieces of every PNG figure (lens, report, study): matplotlib with no pyplot state, each
figure a bare ``Figure`` rendered by Agg and written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from steer_cli.io import atomic_path


def new_figure(width: float, height: float) -> Any:
    return Figure(figsize=(width, height), layout="constrained")


def save_png(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def layer_colors(n: int) -> list[Any]:
    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def integer_ticks(ax: Any, axis: str) -> None:
    if axis in ("x", "both"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axis in ("y", "both"):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
