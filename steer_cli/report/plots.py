"""PNG figures of `steer report --plot`: training curves, accuracy bars, scale sweeps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from matplotlib import colormaps

from steer_cli.figures import layer_colors, new_figure, save_png


def plot_training_run(metrics: Sequence[dict[str, Any]], title: str, path: str | Path) -> Path:
    """Reward, accuracy, completion length and per-layer vector norms (or loss) over steps."""
    steps = [m.get("step", i + 1) for i, m in enumerate(metrics)]
    fig = new_figure(11, 7)
    axes = fig.subplots(2, 2).ravel()
    for ax, key, label in zip(axes[:3], ("reward_mean", "accuracy", "completion_len_mean"),
                              ("mean reward", "accuracy", "mean completion length (tokens)")):
        pts = [(s, m[key]) for s, m in zip(steps, metrics) if isinstance(m.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts), color="tab:blue")
        ax.set(title=label, xlabel="step")
    ax = axes[3]
    norms = [(s, m["vector_norms"]) for s, m in zip(steps, metrics) if isinstance(m.get("vector_norms"), list)]
    if norms:
        n_layers = len(norms[-1][1])
        colors = layer_colors(n_layers)
        for layer in range(n_layers):
            pts = [(s, v[layer]) for s, v in norms if len(v) > layer]
            ax.plot(*zip(*pts), color=colors[layer], label=f"layer {layer}" if n_layers <= 8 else None)
        if n_layers <= 8:
            ax.legend(fontsize="small")
        ax.set(title="vector norm per layer" + (" (dark: first, light: last)" if n_layers > 8 else ""), xlabel="step")
    else:
        pts = [(s, m["loss"]) for s, m in zip(steps, metrics) if isinstance(m.get("loss"), (int, float))]
        if pts:
            ax.plot(*zip(*pts), color="tab:red")
        ax.set(title="loss", xlabel="step")
    fig.suptitle(title)
    return save_png(fig, path)


def plot_accuracy_bars(benchmarks: Sequence[str], series: Sequence[tuple[str, Sequence[Optional[float]],
                       Sequence[Optional[float]]]], path: str | Path, title: str = "accuracy (%)") -> Path:
    """One panel per benchmark, a horizontal bar (± std) per (label, means, stds) series that has
    a value there; a series keeps its colour across panels."""
    panels = [(i, b) for i, b in enumerate(benchmarks) if any(s[1][i] is not None for s in series)]
    cols = max(1, min(3, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    most = max((sum(s[1][i] is not None for s in series) for i, _ in panels), default=1)
    fig = new_figure(6.5 * cols, rows * (1.0 + 0.32 * most))
    cmap = colormaps["tab10" if len(series) <= 10 else "tab20"]
    for n, (i, bench) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, n + 1)
        present = [(k, s) for k, s in enumerate(series) if s[1][i] is not None]
        ys = list(range(len(present)))[::-1]
        ax.barh(ys, [s[1][i] for _, s in present], xerr=[s[2][i] or 0.0 for _, s in present],
                color=[cmap(k % cmap.N) for k, _ in present], capsize=2)
        ax.set_yticks(ys, [s[0] for _, s in present], fontsize="small")
        for y, (_, s) in zip(ys, present):
            ax.text(s[1][i] + (s[2][i] or 0.0), y, f" {s[1][i]:.1f}", va="center", fontsize="small")
        ax.set(title=bench, xlabel="%")
        ax.set_xlim(0, max(100.0 if max(s[1][i] for _, s in present) > 50 else 0.0,
                           1.15 * max(s[1][i] + (s[2][i] or 0) for _, s in present), 1.0))
    fig.suptitle(title)
    return save_png(fig, path)


def plot_scale_sweep(curves: Sequence[tuple[str, Sequence[float], Sequence[Optional[float]],
                                            Sequence[Optional[float]]]], path: str | Path) -> Path:
    """Accuracy (%) against steering scale: one line (± std) per (label, scales, means, stds)."""
    fig = new_figure(8, 5)
    ax = fig.add_subplot(1, 1, 1)
    for label, scales, means, stds in curves:
        pts = [(x, m, s or 0.0) for x, m, s in zip(scales, means, stds) if m is not None]
        if pts:
            xs, ms, ss = zip(*pts)
            ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=2, label=label)
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set(title="accuracy against steering scale (%, mean ± std over seeds)", xlabel="scale", ylabel="%")
    ax.legend(fontsize="small")
    return save_png(fig, path)
