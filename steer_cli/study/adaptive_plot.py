"""The figures of ``steer study adaptive``: the per-layer summary, and one problem token by token
(layers x tokens) with the prompt's segments marked (the reference's Appendix S imshow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from steer_cli.figures import integer_ticks, layer_colors, new_figure, save_png

_SEGMENTS = ("template", "system", "problem", "completion")
_SEGMENT_COLORS = {"template": "tab:gray", "system": "tab:purple", "problem": "tab:green", "completion": "tab:red"}


def plot_adaptive(result: Any, path: str | Path, max_points: int = 2000) -> Path:
    """Left: mean, median and mean |m| per layer, divided by the mean MLP-output norm (the
    reference's normalisation). Middle: per segment, mean |m| relative to all tokens. Right: r of
    cosine(MLP output, u) with the (sign-flipped) magnitude, per layer."""
    fig = new_figure(16, 4.6)
    ax_line, ax_seg, ax_r = fig.subplots(1, 3)
    layers = [ls.layer for ls in result.layers]
    norm = [ls.mean_mlp_norm if ls.mean_mlp_norm > 0 else 1.0 for ls in result.layers]
    for key, label, marker in (("mean", "mean", "o"), ("median", "median", "s"), ("mean_abs", "mean |m|", "^")):
        sign = [ls.sign if key != "mean_abs" else 1 for ls in result.layers]
        values = [s * getattr(ls, key) / n for s, ls, n in zip(sign, result.layers, norm)]
        ax_line.plot(layers, values, marker=marker, label=label)
    ax_line.set(title="token-wise magnitude / mean MLP-output norm", xlabel="layer")
    integer_ticks(ax_line, "x")
    ax_line.legend(fontsize=8)
    grid = np.array([[ls.by_segment[seg]["relative"] if ls.by_segment[seg]["relative"] is not None else np.nan
                      for seg in _SEGMENTS] for ls in result.layers], dtype=float)
    im = ax_seg.imshow(grid, aspect="auto", cmap="viridis")
    ax_seg.set_xticks(range(len(_SEGMENTS)), _SEGMENTS)
    ax_seg.set_yticks(range(len(layers)), [str(x) for x in layers])
    ax_seg.set(title="mean |m| of a segment's tokens / of all tokens", ylabel="layer")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax_seg.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(im, ax=ax_seg, shrink=0.8)
    rs = [ls.r_cosine if ls.r_cosine is not None else np.nan for ls in result.layers]
    ax_r.bar(layers, rs, color=layer_colors(len(layers)))
    ax_r.axhline(0, color="black", linewidth=0.6)
    ax_r.set(title="r(cosine of MLP output with u, magnitude)", xlabel="layer", ylim=(-1.05, 1.05))
    integer_ticks(ax_r, "x")
    fig.suptitle(f"study adaptive: {len(result.adapters)} rank-1 adapter(s) on {Path(str(result.model)).name}, "
                 f"{result.prompts} problem(s)")
    return save_png(fig, path)


def plot_sample(sample: dict[str, Any], renderer: Any, path: str | Path) -> Path:
    """Magnitude per layer (rows) and token (columns) of one problem, each row scaled by its range
    (as the reference does), with a line where the segment changes and the segments named."""
    layers = sorted(sample["magnitude"])
    width = len(sample["segments"])
    grid = np.full((len(layers), width), np.nan)
    for row, layer in enumerate(layers):
        values = np.asarray(sample["magnitude"][layer], dtype=float)
        span = np.nanmax(values) - np.nanmin(values) if values.size else 0.0
        grid[row, :values.size] = values / span if span > 0 else values
    fig = new_figure(max(10, min(30, width / 6)), 2.2 + 0.35 * len(layers))
    ax = fig.subplots()
    limit = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    runs = []
    for i, lab in enumerate(sample["segments"]):
        if runs and runs[-1][2] == lab:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, lab])
    for start, stop, lab in runs:
        if start > 0:
            ax.axvline(start - 0.5, color="black", linewidth=1.2)
        name = _SEGMENTS[lab]
        ax.text((start + stop - 1) / 2, -0.7, name, ha="center", va="bottom", fontsize=7,
                color=_SEGMENT_COLORS[name], clip_on=False)
    ax.set_yticks(range(len(layers)), [str(x) for x in layers])
    ax.set(xlabel="token position", ylabel="layer")
    if width <= 80:
        ax.set_xticks(range(width), [renderer.text(t) for t in sample["ids"]], rotation=90, fontsize=6)
    fig.colorbar(im, ax=ax, shrink=0.8, label="m / range of its row")
    fig.suptitle(f"problem {sample['index']}: steering magnitude per token and layer (each adapter completes "
                 "the prompt its own way; the tokens shown are the longest completion's)", fontsize=9)
    return save_png(fig, path)
