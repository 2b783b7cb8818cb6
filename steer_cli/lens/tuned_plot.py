"""Figures of the tuned lens: how well it reads each layer (training), and what it does to the
steering vectors it reads (``steer lens --tuned``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from steer_cli.figures import integer_ticks, layer_colors, new_figure, save_png


def plot_training(lens: Any, path: str | Path) -> Path:
    """Left: KL to the model per layer through the logit lens and the tuned lens (eval data).
    Right: training KL per update, one line per trained layer."""
    info = lens.info
    fig = new_figure(13, 4.4)
    ax_kl, ax_train = fig.subplots(1, 2)
    layers = list(range(lens.num_layers))
    logit, tuned = info["eval_kl"]["logit_lens"], info["eval_kl"]["tuned"]
    ax_kl.bar([x - 0.2 for x in layers], logit, width=0.4, label="logit lens", color="tab:gray")
    ax_kl.bar([x + 0.2 for x in layers], tuned, width=0.4, label="tuned lens", color="tab:blue")
    if max(logit + tuned, default=0) > 0:
        ax_kl.set_yscale("symlog", linthresh=1e-3)
    ax_kl.set(title="KL(model || lens) per layer (eval data, nats/token)", xlabel="layer (output of)")
    integer_ticks(ax_kl, "x")
    ax_kl.legend(fontsize=8)
    trained = info.get("trained_layers", [])
    colors = layer_colors(len(trained))
    for color, layer in zip(colors, trained):
        ys = [h[str(layer)] for h in info.get("train_kl", [])]
        ax_train.plot(range(1, len(ys) + 1), ys, color=color, marker="." if len(ys) < 40 else None,
                      label=f"layer {layer}")
    ax_train.set(title="training KL per update", xlabel="update", ylabel="nats/token")
    integer_ticks(ax_train, "x")
    if 0 < len(trained) <= 12:
        ax_train.legend(fontsize=7, ncol=2)
    fig.suptitle(f"tuned lens of {Path(str(info.get('model', lens.base_model))).name}: "
                 f"{info.get('sequences', '?')} sequences, {info.get('updates', '?')} update(s)")
    return save_png(fig, path)


def plot_directions(layers: Sequence[int], cosines: Sequence[float], ratios: Sequence[float],
                    title: str, path: str | Path) -> Path:
    """cos(s_l, A_l s_l) and |A_l s_l| / |s_l| per layer: how much the lens turns and stretches
    each steering vector (the reference's tuned_lens_stats bar chart, without the bias)."""
    fig = new_figure(10, 3.8)
    ax_cos, ax_ratio = fig.subplots(1, 2)
    ax_cos.bar(layers, cosines, color="tab:purple")
    ax_cos.set(title="cos(s, A s) per layer", xlabel="layer", ylim=(-1.05, 1.05))
    integer_ticks(ax_cos, "x")
    ax_ratio.bar(layers, ratios, color="tab:olive")
    ax_ratio.axhline(1.0, color="black", linewidth=0.6)
    ax_ratio.set(title="|A s| / |s| per layer", xlabel="layer")
    integer_ticks(ax_ratio, "x")
    fig.suptitle(title)
    return save_png(fig, path)
