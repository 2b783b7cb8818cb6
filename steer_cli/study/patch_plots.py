"""Figures of ``steer study patch``: per-head curves of each head mode with the baselines dashed
(the paper's Figs. 5, 20, 21, with KL or accuracy), and the tokens each baseline patch promotes
against the reference (Fig. 6)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from steer_cli.figures import integer_ticks, new_figure, save_png
from steer_cli.study.branches import BASELINES, HEAD_MODES

_BASE_STYLE = {"no-patch": "#F28E2B", "base": "#333333", "skip-attn": "#56B4E9", "skip-layer": "#009E73"}
_PATH_STYLE = {"all": "-", "residual": "--", "mlp": ":"}


def patch_values(results: dict[str, Any]) -> dict[str, Optional[float]]:
    """The plotted value of each patch: mean KL (metric kl) or the Average's mean (accuracy)."""
    values: dict[str, Optional[float]] = {}
    for p in results["patches"]:
        values[p["key"]] = p["kl"]["mean"] if results["metric"] == "kl" else (p.get("average") or {}).get("mean")
    return values


def plot_heads(results: dict[str, Any], path: Path) -> Path:
    values = patch_values(results)
    curves: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    baselines = {}
    for p in results["patches"]:
        value = values.get(p["key"])
        if value is None:
            continue
        if p["mode"] in BASELINES:
            baselines[p["mode"]] = value
        elif p["mode"] in HEAD_MODES and len(p["heads"]) == 1:
            curves[p["mode"]][p["path"]].append((p["heads"][0], value))
    modes = [m for m in HEAD_MODES if m in curves] or ["baselines"]
    fig = new_figure(4.2 * len(modes), 3.4)
    ylabel = (f"KL({results['reference']['label']} || patch)" if results["metric"] == "kl"
              else "Average accuracy")
    # KLs of head patches sit orders of magnitude below the base patch's: on a linear axis they
    # all lie on 0, so KL gets a symlog axis linear below the smallest positive value
    positive = [v for v in values.values() if v is not None and v > 0]
    for n, mode in enumerate(modes):
        ax = fig.add_subplot(1, len(modes), n + 1)
        if results["metric"] == "kl" and positive:
            ax.set_yscale("symlog", linthresh=min(positive))
        for path_name, points in curves.get(mode, {}).items():
            points.sort()
            ax.plot([h for h, _ in points], [y for _, y in points], marker="o", ms=3, color="#4C4C9D",
                    ls=_PATH_STYLE.get(path_name, "-"), label=f"path {path_name}")
        for name, value in baselines.items():
            ax.axhline(value, color=_BASE_STYLE.get(name, "grey"), ls="--", lw=1, label=name)
        ax.set_title(mode if mode != "baselines" else "baselines (no head modes measured)")
        ax.set_xlabel("head (k, v: key-value head)")
        if n == 0:
            ax.set_ylabel(ylabel)
        integer_ticks(ax, "x")
        if results["metric"] == "kl":
            ax.set_ylim(bottom=0.0)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"vector of layer {results['source_layer']} through layer {results['target_layer']}")
    return save_png(fig, path)


def plot_baseline_tokens(results: dict[str, Any], path: Path, show: int = 8) -> Path:
    """Most promoted tokens (mean probability change against the reference) of each baseline."""
    reference = results["reference"]["key"]
    shown = [p for p in results["patches"] if p["mode"] in BASELINES and p["key"] != reference]
    fig = new_figure(3.4 * max(1, len(shown)), 3.2)
    for n, p in enumerate(shown):
        ax = fig.add_subplot(1, max(1, len(shown)), n + 1)
        items = p["promoted"][:show][::-1]
        ax.barh(range(len(items)), [x["mean_delta"] for x in items], color=_BASE_STYLE.get(p["mode"], "grey"))
        ax.set_yticks(range(len(items)), [f"'{x['token']}'" for x in items])
        ax.set_title(f"{p['label']} vs {reference}", fontsize=9)
        ax.set_xlabel("mean probability change")
    return save_png(fig, path)
