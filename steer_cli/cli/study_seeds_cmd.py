"""steer study seeds: do seeds of one configuration find the same direction at each layer?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from steer_cli.cli.common import CONFIG_HELP, SET_HELP, doc, info, layer_spec, run_command, settings_from_cli
from steer_cli.cli.study_cmd import study_app


@study_app.command("seeds")
def seeds_command(
    vectors: list[str] = typer.Argument(..., help="Two or more vectors files (or run directories): seeds of one configuration."),
    accuracy: Optional[list[Path]] = typer.Option(None, "--accuracy", help="Per-layer accuracy of each seed's single-layer runs, once per vectors file in order: a `steer study layers` output (or its study.json), or JSON {layer: accuracy}."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Only these layers, e.g. 0-10,17 (default: all)."),
    axis_removal: Optional[bool] = typer.Option(None, "--axis-removal/--no-axis-removal", help=doc("study.seeds.axis_removal")),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where study.json and figures/ go (default: runs/study/seeds)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished study in --output-dir."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also copy the figure into this directory."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Write no figure."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout instead of tables."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Root of the default output directory."),
) -> None:
    """Per-layer cosine between seeds' vectors, |ΔAcc| of their single-layer runs, and greedy axis
    removal: how few coordinates carry the shared direction (reference: seed_alignment)."""
    from rich.markup import escape

    from steer_cli.lens.logit import find_vectors
    from steer_cli.study.outputs import copy_figures, default_output_dir
    from steer_cli.study.seeds import render_seeds, seeds_study
    from steer_cli.terminal import stdout_console

    settings = run_command(settings_from_cli, preset=None, config=config, sets=sets, infer_preset=False,
                           flags={"study.seeds.axis_removal": axis_removal})
    paths = [run_command(find_vectors, v, runs_dir)[0] for v in vectors]
    out = output_dir or default_output_dir(runs_dir, "seeds")
    result, figures = run_command(seeds_study, paths, settings, output_dir=out, accuracies=accuracy,
                                  layers=run_command(layer_spec, layers), overwrite=overwrite, plot=not no_plot)
    for note in result.notes:
        info(escape(note))
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        render_seeds(result, stdout_console())
    for f in figures + run_command(copy_figures, figures, plot):
        info(escape(f"wrote {f}"))
    info(escape(f"wrote {Path(out) / 'study.json'}"))
