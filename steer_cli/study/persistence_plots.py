"""Figures of ``steer study persistence``: the L x L matrices (the paper's Figs. 2, 14, 15) and
their scatter against the pair grid or the layer distance (Figs. 4, 17, 18)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import TwoSlopeNorm

from steer_cli.figures import integer_ticks, new_figure, save_png

_TITLES = {"token_cos": "token cosine with s_l", "diff_cos": "uniformity over positions",
           "layer_cos": "mean difference · cosine with s_l", "last_diff_cos": "last-layer differences (cosine)"}


def _array(rows: Any) -> np.ndarray:
    return np.array([[np.nan if x is None else float(x) for x in row] for row in rows], dtype=np.float64)


def plot_matrices(results: dict[str, Any], path: Path) -> Path:
    names = ["token_cos", "diff_cos", "layer_cos", "last_diff_cos"]
    fig = new_figure(4.0 * len(names), 3.6)
    injected = results["injected"]
    for n, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), n + 1)
        m = _array(results[name])
        finite = m[np.isfinite(m)]
        lo = float(finite.min()) if finite.size else -1.0
        norm = TwoSlopeNorm(vmin=min(lo, -1e-6), vcenter=0.0, vmax=1.0)
        image = ax.imshow(np.ma.masked_invalid(m), cmap="PuOr_r", norm=norm, origin="upper", interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.8)
        if name == "last_diff_cos":
            ax.set_xticks(range(len(injected)), [str(i) for i in injected])
            ax.set_yticks(range(len(injected)), [str(i) for i in injected])
            ax.set_xlabel("injection layer j")
        else:
            integer_ticks(ax, "both")
            ax.set_xlabel("measured layer l")
        ax.set_ylabel("injection layer i")
        ax.set_title(_TITLES[name], fontsize=9)
    return save_png(fig, path)


def plot_scatter(results: dict[str, Any], against: str, path: Path) -> Path:
    """Each matrix's upper triangle (i < j) with its linear fit and r, as the reference plots
    them: against the layer distance (x: distance) or the pair accuracy (y: accuracy)."""
    names = ["token_cos", "diff_cos", "layer_cos"]
    L = len(results["layers"])
    iu = np.triu_indices(L, k=1)
    idx = np.arange(L, dtype=np.float64)
    distance = (np.abs(idx[None, :] - idx[:, None]) / max(1, L - 1))[iu]
    fig = new_figure(4.0 * len(names), 3.4)
    for n, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), n + 1)
        m = _array(results[name])[iu]
        if against == "distance":
            x, y, xlabel, ylabel = distance, m, "layer distance |i - j| / (L - 1)", _TITLES[name]
        else:
            x, y, xlabel, ylabel = m, _array(results["pairs"]["accuracy"])[iu], _TITLES[name], "pair accuracy (Average)"
        keep = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[keep], y[keep], s=10, color="#4C4C9D")
        fit = results["correlations"][name].get(against) or {}
        if fit.get("slope") is not None:
            line = np.linspace(x[keep].min(), x[keep].max(), 20)
            ax.plot(line, fit["slope"] * line + fit["intercept"], color="red", lw=1)
        r = fit.get("r")
        ax.set_title(f"r = {r:.3f} (n = {fit.get('n', 0)})" if r is not None else f"n = {fit.get('n', 0)}", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
    return save_png(fig, path)
