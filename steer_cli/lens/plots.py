"""PNG figures of `steer lens --plot` and `--compare`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from steer_cli.figures import integer_ticks, new_figure, save_png


def plot_lens(result: Any, path: str | Path) -> Path:
    """Norms per layer, layer x layer cosines, singular values, and per-layer score histograms
    over the whole vocabulary (100 bins, log y), as in the reference implementation."""
    shown = [ll.layer for ll in result.layers if not ll.zero]
    cols = max(1, min(4, len(shown)))
    rows = math.ceil(len(shown) / cols) if shown else 0
    fig = new_figure(16, 3.6 * (1 + rows))
    # separate subfigures: a colorbar in a grid shared with differently split rows collapses
    # constrained layout
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, rows]) if rows else (fig, None)
    ax_norm, ax_cos, ax_sv = top.subplots(1, 3)
    ax_norm.bar(range(result.num_layers), result.norms, color="tab:blue")
    ax_norm.set(title="vector norm per layer", xlabel="layer", ylabel="L2 norm")
    integer_ticks(ax_norm, "x")
    im = ax_cos.imshow(result.cosines.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    integer_ticks(ax_cos, "both")
    ax_cos.set(title="cosine between layers' vectors", xlabel="layer", ylabel="layer")
    top.colorbar(im, ax=ax_cos, shrink=0.8)
    sv = result.singular_values
    if sv and sv[0] > 0:
        ax_sv.semilogy(range(1, len(sv) + 1), [max(x, sv[0] * 1e-9) for x in sv], marker="o")
    ax_sv.set(title=f"singular values (stable rank {result.stable_rank:.2f})", xlabel="index")
    integer_ticks(ax_sv, "x")
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
    fig = new_figure(10, 4)
    ax1, ax2 = fig.subplots(1, 2)
    layers = list(range(len(result.cosines)))
    ax1.bar(layers, result.cosines, color="tab:purple")
    ax1.set(title="cosine per layer", xlabel="layer", ylim=(-1.05, 1.05))
    integer_ticks(ax1, "x")
    ax2.plot(layers, result.norms_a, marker="o", label=Path(result.a).parent.name or "A")
    ax2.plot(layers, result.norms_b, marker="s", label=Path(result.b).parent.name or "B")
    ax2.set(title="vector norms", xlabel="layer")
    integer_ticks(ax2, "x")
    ax2.legend()
    return save_png(fig, path)

