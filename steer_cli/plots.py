"""PNG figures for `steer lens --plot` and `steer report --plot` (matplotlib, no pyplot state:
each figure is a bare ``Figure`` rendered by Agg and written atomically)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from steer_cli.io import atomic_path


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_png(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _layer_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def _integer_ticks(ax: Any, axis: str) -> None:
    from matplotlib.ticker import MaxNLocator

    if axis in ("x", "both"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axis in ("y", "both"):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def plot_lens(result: Any, path: str | Path) -> Path:
    """Norms per layer, layer x layer cosines, singular values, and per-layer score histograms
    over the whole vocabulary (100 bins, log y), as in the reference implementation."""
    shown = [ll.layer for ll in result.layers if not ll.zero]
    cols = max(1, min(4, len(shown)))
    rows = math.ceil(len(shown) / cols) if shown else 0
    fig = _figure(16, 3.6 * (1 + rows))
    # separate subfigures: a colorbar in a grid shared with differently split rows collapses
    # constrained layout
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, rows]) if rows else (fig, None)
    ax_norm, ax_cos, ax_sv = top.subplots(1, 3)
    ax_norm.bar(range(result.num_layers), result.norms, color="tab:blue")
    ax_norm.set(title="vector norm per layer", xlabel="layer", ylabel="L2 norm")
    _integer_ticks(ax_norm, "x")
    im = ax_cos.imshow(result.cosines.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    _integer_ticks(ax_cos, "both")
    ax_cos.set(title="cosine between layers' vectors", xlabel="layer", ylabel="layer")
    top.colorbar(im, ax=ax_cos, shrink=0.8)
    sv = result.singular_values
    if sv and sv[0] > 0:
        ax_sv.semilogy(range(1, len(sv) + 1), [max(x, sv[0] * 1e-9) for x in sv], marker="o")
    ax_sv.set(title=f"singular values (stable rank {result.stable_rank:.2f})", xlabel="index")
    _integer_ticks(ax_sv, "x")
    if bottom is not None:
        axes = bottom.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes[len(shown):]:
            ax.set_visible(False)
        for ax, layer in zip(axes, shown):
            ax.hist(result.scores[layer].numpy(), bins=100, log=True, color="tab:gray")
            ax.set(title=f"layer {layer}: {result.kind} over the vocabulary", xlabel=result.kind)
    fig.suptitle(f"{Path(result.vectors_path).name} · {result.model}")
    return save_png(fig, path)


def plot_compare(result: Any, path: str | Path) -> Path:
    """Per-layer cosine between two vectors files, and both files' norms."""
    fig = _figure(10, 4)
    ax1, ax2 = fig.subplots(1, 2)
    layers = list(range(len(result.cosines)))
    ax1.bar(layers, result.cosines, color="tab:purple")
    ax1.set(title="cosine per layer", xlabel="layer", ylim=(-1.05, 1.05))
    _integer_ticks(ax1, "x")
    ax2.plot(layers, result.norms_a, marker="o", label=Path(result.a).parent.name or "A")
    ax2.plot(layers, result.norms_b, marker="s", label=Path(result.b).parent.name or "B")
    ax2.set(title="vector norms", xlabel="layer")
    _integer_ticks(ax2, "x")
    ax2.legend()
    return save_png(fig, path)


def plot_training_run(metrics: Sequence[dict[str, Any]], title: str, path: str | Path) -> Path:
    """Reward, accuracy, completion length and per-layer vector norms (or loss) over steps."""
    steps = [m.get("step", i + 1) for i, m in enumerate(metrics)]
    fig = _figure(11, 7)
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
        colors = _layer_colors(n_layers)
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
    from matplotlib import colormaps

    panels = [(i, b) for i, b in enumerate(benchmarks) if any(s[1][i] is not None for s in series)]
    cols = max(1, min(3, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    most = max((sum(s[1][i] is not None for s in series) for i, _ in panels), default=1)
    fig = _figure(6.5 * cols, rows * (1.0 + 0.32 * most))
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
    fig = _figure(8, 5)
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
