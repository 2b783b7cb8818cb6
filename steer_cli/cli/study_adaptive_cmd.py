"""steer study adaptive: rank-1 LoRA adapters as token-wise steering (magnitude per token)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from steer_cli.cli.common import CONFIG_HELP, PRESET_HELP, SET_HELP, doc, info, run_command, settings_from_cli
from steer_cli.cli.study_cmd import study_app


@study_app.command("adaptive")
def adaptive_command(
    adapters: list[str] = typer.Argument(..., help="Rank-1 LoRA adapters on down_proj: adapter directories, a directory of them (lora-1-layer-<l>/), or LoRA training runs."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model (default: the adapters' base_model_name_or_path)."),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=doc("data.dataset")),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=doc("data.data_dir")),
    prompts: Optional[int] = typer.Option(None, "--prompts", help=doc("study.adaptive.prompts")),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=doc("study.adaptive.max_new_tokens")),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=doc("study.adaptive.temperature")),
    seed: Optional[int] = typer.Option(None, "--seed", help=doc("study.adaptive.seed")),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where study.json, figures/ and partial/ go (default: runs/study/adaptive)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an unfinished study in --output-dir."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished or unfinished study in --output-dir."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also copy the figures into this directory."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Write no figures."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout instead of a table."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Root of the default output directory."),
) -> None:
    """Rank-1 LoRA adapters as token-wise steering: magnitude per token and layer, its cosine with the MLP output, prompt segments marked (paper §10, Appendix S)."""
    from rich.markup import escape

    from steer_cli.study.adaptive import adaptive_study, base_model_of, find_adapter_dirs, render_adaptive
    from steer_cli.study.outputs import copy_figures, default_output_dir
    from steer_cli.terminal import stdout_console

    if model is None:
        model = run_command(base_model_of, run_command(find_adapter_dirs, adapters))
        if model is None:
            run_command(_no_model)
    settings = run_command(settings_from_cli, preset=preset, config=config, sets=sets, flags={
        "model.name": model, "data.dataset": dataset, "data.data_dir": data_dir,
        "study.adaptive.prompts": prompts, "study.adaptive.max_new_tokens": max_new_tokens,
        "study.adaptive.temperature": temperature, "study.adaptive.seed": seed})
    out = output_dir or default_output_dir(runs_dir, "adaptive")
    result, figures = run_command(adaptive_study, adapters, settings, output_dir=out, overwrite=overwrite,
                                  resume=resume, plot=not no_plot)
    for note in result.notes:
        info(escape(note))
    if as_json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        render_adaptive(result, stdout_console())
    for f in figures + run_command(copy_figures, figures, plot):
        info(escape(f"wrote {f}"))
    info(escape(f"wrote {Path(out) / 'study.json'}"))


def _no_model() -> None:
    from steer_cli.errors import SteerError

    raise SteerError("the adapters do not name their base model (base_model_name_or_path); pass --model")
