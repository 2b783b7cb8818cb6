"""steer study pairs: every pair of single-layer vectors applied together (Figure 13)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from steer_cli.cli.common import doc
from steer_cli.cli.study_cmd import study_app
from steer_cli.cli.study_common import with_eval_options


@study_app.command("pairs")
@with_eval_options
def pairs_command(
    merged: Path = typer.Argument(..., help="Merged single-layer vectors (steer merge of single-layer runs): "
                                            "row l is the vector trained alone at layer l."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Layers of the grid, e.g. 0-3 (default: every "
                                                                "layer the file steers)."),
    full: Optional[Path] = typer.Option(None, "--full", help="The all-layer run (a run, a vectors file, or its eval "
                                                             "output) whose accuracy P normalises the relative maps."),
    model: Optional[str] = typer.Option(None, "--model", help=doc("model.name") + " Default: the file's base model."),
    *,
    opts: dict[str, Any],
) -> None:
    """Every pair of single-layer vectors applied together, and the gain over each alone (--full: relative maps)."""
    from steer_cli.cli.study_common import flags_of, run_study

    flags = flags_of(opts, model)

    def body(coord: Any) -> Optional[tuple[dict[str, Any], Path]]:
        from steer_cli.cli.study_common import fields_of, interactive, say, study_dir, study_settings
        from steer_cli.evaluate.targets import base_model_of
        from steer_cli.patching.strength import parse_layer_spec
        from steer_cli.study.inputs import vectors_source
        from steer_cli.study.pairs import pairs_study

        source = vectors_source(merged)
        given = dict(flags)
        if given["model.name"] is None:
            given["model.name"] = base_model_of(vectors=source.path)
            if coord.main:
                say(f"base model from {source.path}: {given['model.name']}")
        settings = study_settings(preset=opts["preset"], config=opts["config"], sets=opts["sets"], flags=given,
                                  run=source.run)
        out = study_dir(settings, "pairs")
        study = pairs_study(settings, source.path, out=out, layers=parse_layer_spec(layers) if layers else None,
                            full=full, fields=fields_of(opts["fields"]), interactive=interactive(), coord=coord,
                            plot_dir=opts["plot"])
        return (study, out) if study else None

    run_study(body, as_json=opts["as_json"], show=show_pairs)


def show_pairs(study: dict[str, Any]) -> None:
    from steer_cli.cli.study_common import print_grid

    r = study["results"]
    layers = [str(x) for x in r["layers"]]
    print_grid("steer study pairs: Average accuracy (%) of layers i + j", layers, layers, r["grid"]["average"],
               corner="i \\ j")
    if r.get("relative"):
        print_grid("relative improvement over the better single vector, (A_ij - max) / (P - max)", layers, layers,
                   r["relative"]["max"]["average"], fmt=lambda v: "-" if v is None else f"{v:.2f}", corner="i \\ j")
