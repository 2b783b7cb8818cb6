"""steer lens train-tuned: train a tuned lens (one affine translator per layer) on completions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from steer_cli.cli.common import (
    CONFIG_HELP,
    PRESET_HELP,
    SET_HELP,
    doc,
    info,
    layer_spec,
    run_command,
    settings_from_cli,
)
from steer_cli.cli.lens_cmd import lens_app


@lens_app.command("train-tuned")
def train_tuned_command(
    model: Optional[str] = typer.Option(None, "--model", help=doc("model.name")),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    data: Optional[Path] = typer.Option(None, "--data", help="Training sequences: .jsonl/.json/.parquet rows with input_ids, text, or a problem (rendered with the prompt template) plus a completion. Default: the model completes --prompts problems of --dataset."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Held-out sequences for the eval KL, same format (default: the first lens.tuned.eval_sequences training ones, as the reference)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=doc("data.dataset")),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=doc("data.data_dir")),
    prompts: Optional[int] = typer.Option(None, "--prompts", help=doc("lens.tuned.prompts")),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=doc("lens.tuned.max_new_tokens")),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=doc("lens.tuned.temperature")),
    layers: Optional[str] = typer.Option(None, "--layers", help="Train the translators of these layers only, e.g. 0-10,17 (default: every layer but the last, whose lens is the model's own head)."),
    lr: Optional[float] = typer.Option(None, "--lr", help=doc("lens.tuned.lr")),
    epochs: Optional[int] = typer.Option(None, "--epochs", help=doc("lens.tuned.epochs")),
    seed: Optional[int] = typer.Option(None, "--seed", help=doc("lens.tuned.seed")),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Lens directory (default: runs/tuned-lens/<model>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an unfinished training in --output-dir."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a lens (or an unfinished one) in --output-dir."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Write no figure."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Root of the default output directory."),
) -> None:
    """Train a tuned lens on a frozen model: KL to the model's own next-token distribution, the
    reference's schedule; saved in the tuned-lens library's format (config.json + params.pt).
    Read vectors through it with `steer lens FILE --tuned DIR`."""
    from rich.markup import escape

    from steer_cli.lens.tuned_train import default_output_dir, train_tuned_lens
    from steer_cli.study.outputs import Progress

    settings = run_command(settings_from_cli, preset=preset, config=config, sets=sets, flags={
        "model.name": model, "data.dataset": dataset, "data.data_dir": data_dir,
        "lens.tuned.prompts": prompts, "lens.tuned.max_new_tokens": max_new_tokens,
        "lens.tuned.temperature": temperature, "lens.tuned.lr": lr, "lens.tuned.epochs": epochs,
        "lens.tuned.seed": seed})
    out = output_dir or default_output_dir(runs_dir, settings.model.name)
    bars: list[Any] = []

    def progress(what: str) -> Any:
        bar = Progress(f"lens train-tuned: {what}", unit={"completions": "problems", "eval": "sequences"}.get(what, "sequences"))
        bars.append(bar)
        return bar.update

    try:
        lens, where, figures = run_command(train_tuned_lens, settings, output_dir=out, data=data, eval_data=eval_data,
                                           layers=run_command(layer_spec, layers), overwrite=overwrite, resume=resume,
                                           plot=not no_plot, say=lambda msg: info(escape(msg)), progress=progress)
    finally:
        for bar in bars:
            bar.__exit__(None, None, None)
    kl = lens.info["eval_kl"]
    rows = "  ".join(f"{i}: {a:.3g}->{b:.3g}" for i, (a, b) in enumerate(zip(kl["logit_lens"], kl["tuned"])))
    info(escape(f"eval KL per layer (logit lens -> tuned lens, nats/token): {rows}"))
    for f in figures:
        info(escape(f"wrote {f}"))
    info(escape(f"wrote {where} (config.json, params.pt, steer_lens.json); read vectors with "
                f"`steer lens FILE --tuned {where}`"))
