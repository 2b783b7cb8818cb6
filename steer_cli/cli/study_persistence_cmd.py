"""steer study persistence: an early vector's effect through later layers, against the pair grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from steer_cli.cli.common import doc, run_command
from steer_cli.cli.study_cmd import study_app
from steer_cli.cli.study_common import (
    FORCED_CONFIG_HELP,
    FORCED_JSON_HELP,
    FORCED_OUTPUT_HELP,
    FORCED_OVERWRITE_HELP,
    FORCED_PLOT_HELP,
    FORCED_SET_HELP,
    MODEL_HELP,
    print_json,
    say,
    study_inputs,
)

HELP = (
    "Does an early vector's effect persist through later layers? (companion paper, section 5)\n\n"
    "MERGED is the [L, d] stack of single-layer vectors (row l trained alone at layer l: `steer merge` of "
    "single-layer runs). For each prompt and injection layer i: a completion is sampled with row i alone, "
    "teacher-forced with and without it, and every layer's residual difference is reduced to the L x L "
    "matrices token_cos (cosine with the vector trained for each later layer), diff_cos (uniformity over "
    "positions) and layer_cos (cosine of the mean difference). --pairs DIR correlates them (upper triangle, "
    "NaN-safe) with a `steer study pairs` grid. The last layer's mean differences go through the logit lens. "
    "Writes study.json and figures/*.png; a stopped study continues."
)


@study_app.command("persistence", help=HELP)
def persistence_command(
    merged: Optional[str] = typer.Argument(None, metavar="MERGED", show_default=False,
                                           help="Merged vectors file (row l = the vector trained alone at layer l)."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="A `steer study pairs` output directory (or its "
                                         "study.json) whose grid the matrices are correlated with."),
    layers: Optional[str] = typer.Option(None, "--layers", help=doc("study.persistence.layers")),
    positions: Optional[str] = typer.Option(None, "--positions", help=doc("study.persistence.positions")),
    prompts: Optional[int] = typer.Option(None, "--prompts", help=doc("study.persistence.prompts")),
    seed: Optional[int] = typer.Option(None, "--seed", help=doc("study.persistence.seed")),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=doc("study.persistence.temperature")),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens",
                                                 help=doc("study.persistence.max_new_tokens")),
    batch: Optional[int] = typer.Option(None, "--batch", help=doc("study.persistence.batch")),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help=FORCED_OUTPUT_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=FORCED_OVERWRITE_HELP),
    plot: bool = typer.Option(True, "--plot/--no-plot", help=FORCED_PLOT_HELP),
    as_json: bool = typer.Option(False, "--json", help=FORCED_JSON_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help=FORCED_CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=FORCED_SET_HELP),
) -> None:
    flags = {"study.persistence.layers": layers, "study.persistence.positions": positions,
             "study.persistence.prompts": prompts, "study.persistence.seed": seed,
             "study.persistence.temperature": temperature, "study.persistence.max_new_tokens": max_new_tokens,
             "study.persistence.batch": batch, "output.overwrite": overwrite or None}
    out = run_command(_persistence, merged, pairs=pairs, model=model, config=config, sets=sets, flags=flags,
                      output_dir=output_dir, plot=plot)
    if as_json:
        print_json(out)
    else:
        from steer_cli.study.render import render_persistence
        from steer_cli.terminal import stdout_console

        render_persistence(out, stdout_console())


def _persistence(target: Optional[str], *, pairs: Optional[Path], model: Optional[str], config: Optional[Path],
                 sets: Optional[list[str]], flags: dict[str, Any], output_dir: Optional[Path], plot: bool) -> Any:
    from steer_cli.cli.common import is_interactive
    from steer_cli.study.persistence import run_persistence

    path, run, settings = study_inputs(target, model=model, config=config, sets=sets, flags=flags)
    doc_, out = run_persistence(settings, path, run, pairs=pairs, output_dir=output_dir,
                                interactive=is_interactive(), plot=plot)
    say(f"results in {out}")
    return doc_
