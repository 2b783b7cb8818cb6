"""The figure of ``steer study seeds``: cosine per layer beside |ΔAcc|, and the axis-removal curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steer_cli.figures import integer_ticks, layer_colors, new_figure, save_png


def _label(path: str) -> str:
    """A short name: the run of a run's vectors file (its final/ or checkpoint-N/ named after it)."""
    p = Path(path)
    if p.name != "vectors.safetensors" or not p.parent.name:
        return p.stem
    if p.parent.name == "final" or p.parent.name.startswith("checkpoint-"):
        return p.parent.parent.name if p.parent.name == "final" else f"{p.parent.parent.name}/{p.parent.name}"
    return p.parent.name


def plot_seeds(result: Any, path: str | Path) -> Path:
    """Left: per-layer cosine of each pair (bars) and |ΔAcc| (orange, right axis) when known.
    Right: greedy axis removal of the first pair, one line per layer, with the shuffled null dashed."""
    fig = new_figure(14, 4.8)
    ax_cos, ax_rm = fig.subplots(1, 2)
    pairs = list(result.pairs.items())
    width = 0.8 / (len(pairs) + 1)
    for k, ((i, j), rows) in enumerate(pairs):
        xs = [pl.layer + (k - len(pairs) / 2) * width for pl in rows]
        ys = [pl.cosine if pl.cosine is not None else 0.0 for pl in rows]
        ax_cos.bar(xs, ys, width=width, label=f"{_label(result.paths[i])} vs {_label(result.paths[j])}")
    cosines = [pl.cosine for _, rows in pairs for pl in rows if pl.cosine is not None]
    low = min([0.0] + cosines) - 0.05 if min([0.0] + cosines) < 0 else 0.0
    ax_cos.axhline(0, color="black", linewidth=0.6)
    ax_cos.set(title="cosine between seeds, per layer", xlabel="layer", ylabel="cosine", ylim=(low, 1.05))
    integer_ticks(ax_cos, "x")
    diffs = [(pl.layer, pl.acc_diff) for pl in pairs[0][1] if pl.acc_diff is not None] if pairs else []
    if diffs:
        ax_acc = ax_cos.twinx()
        ax_acc.bar([layer + len(pairs) / 2 * width for layer, _ in diffs], [d for _, d in diffs], width=width,
                   color="tab:orange", label="|ΔAcc| (first pair)")
        top = max(max(d for _, d in diffs), 1e-3) * 1.1
        ax_acc.set_ylim(low / 1.05 * top, top)  # both axes' zeros at one height
        ax_acc.set_ylabel("|ΔAcc| of the single-layer runs")
        handles = ax_cos.get_legend_handles_labels()
        extra = ax_acc.get_legend_handles_labels()
        ax_cos.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7, loc="upper left",
                      bbox_to_anchor=(0, -0.12), ncol=3, frameon=False)
    else:
        ax_cos.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.12), ncol=3, frameon=False)
    if pairs:
        rows = [pl for pl in pairs[0][1] if pl.removal is not None]
        colors = layer_colors(len(rows))
        for color, pl in zip(colors, rows):
            curve = pl.removal.sampled(result.curve_points)
            ax_rm.plot([d for d, _ in curve], [c for _, c in curve], color=color, label=f"layer {pl.layer}")
            if pl.null_removal is not None:
                null = pl.null_removal.sampled(result.curve_points)
                ax_rm.plot([d for d, _ in null], [c for _, c in null], color=color, linestyle=":", linewidth=0.9)
        for t in result.thresholds:
            ax_rm.axhline(t, color="gray", linewidth=0.6, linestyle="--")
        lowest = min([0.0] + [c for pl in rows for r in (pl.removal, pl.null_removal) if r is not None
                              for c in r.cosines])
        ax_rm.set_xscale("log")
        ax_rm.invert_xaxis()
        ax_rm.set(title="greedy axis removal (dotted: coordinates shuffled)", xlabel="coordinates left",
                  ylabel="cosine", ylim=(lowest - 0.05, 1.05))
        if rows and len(rows) <= 12:
            ax_rm.legend(fontsize=7, ncol=2)
    fig.suptitle("study seeds: " + ", ".join(_label(p) for p in result.paths))
    return save_png(fig, path)
