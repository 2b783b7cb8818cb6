"""Figures of ``steer study tokens``: the named token's probability change at the first generated
position against the rest (the paper's Fig. 3), the change of the most promoted tokens (Fig. 19),
and KL by position."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from steer_cli.figures import new_figure, save_png

_FIRST, _REST = "#F28E2B", "#56B4E9"


def _quoted(text: str) -> str:
    return f"'{text}'"


def plot_token_delta(first: Sequence[float], rest: Sequence[float], token: str, path: Path) -> Path:
    fig = new_figure(4.2, 3.6)
    ax = fig.add_subplot()
    data = [list(first) or [float("nan")], list(rest) or [float("nan")]]
    box = ax.boxplot(data, patch_artist=True, showfliers=True, widths=0.55, medianprops={"color": "black"})
    for patch, color in zip(box["boxes"], (_FIRST, _REST)):
        patch.set_facecolor(color)
    ax.set_xticks([1, 2], [f"position 0\n(n={len(first)})", f"positions > 0\n(n={len(rest)})"])
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel(f"p_steered - p_reference of {_quoted(token)}")
    ax.set_title(f"{_quoted(token)}: probability change by position")
    return save_png(fig, path)


def plot_promoted_tokens(groups: dict[int, dict[str, list[float]]], names: dict[int, str], path: Path,
                         show: int = 12) -> Path:
    """Boxplots of the top probability change per position, grouped by the promoted token (the
    most frequent ``show`` tokens), position 0 and the rest side by side."""
    ranked = sorted(groups, key=lambda i: -(len(groups[i]["first"]) + len(groups[i]["rest"])))[:show]
    fig = new_figure(max(5.0, 0.55 * len(ranked) + 2.0), 3.8)
    ax = fig.add_subplot()
    for offset, key, color in ((-0.18, "first", _FIRST), (0.18, "rest", _REST)):
        data = [groups[i][key] or [float("nan")] for i in ranked]
        box = ax.boxplot(data, positions=[n + offset for n in range(len(ranked))], widths=0.32, patch_artist=True,
                         showfliers=False, manage_ticks=False, medianprops={"color": "black"})
        for patch in box["boxes"]:
            patch.set_facecolor(color)
    ax.set_xticks(range(len(ranked)), [_quoted(names.get(i, str(i))) for i in ranked], rotation=45, ha="right")
    ax.set_ylabel("largest probability change")
    ax.set_title("most promoted token per position (orange: position 0, blue: the rest)")
    return save_png(fig, path)


def plot_kl_by_position(means: Sequence[Optional[float]], rest: Optional[dict[str, Any]], path: Path) -> Path:
    fig = new_figure(5.0, 3.2)
    ax = fig.add_subplot()
    xs = [k for k, m in enumerate(means) if m is not None]
    ax.plot(xs, [means[k] for k in xs], marker="o", ms=3, color=_REST)
    if xs and xs[0] == 0:
        ax.plot([0], [means[0]], marker="o", ms=6, color=_FIRST)
    if rest:
        ax.axhline(rest["mean"], color="grey", lw=0.8, ls="--", label="mean over positions > 0")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("generation position")
    ax.set_ylabel("KL(reference || steered)")
    ax.set_yscale("symlog", linthresh=1e-6)
    # KL is never negative: without a floor, symlog's autoscale mirrors the axis below 0 (empty
    # negative decades that take half the figure)
    ax.set_ylim(bottom=0.0)
    return save_png(fig, path)
