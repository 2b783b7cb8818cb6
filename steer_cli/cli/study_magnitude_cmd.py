"""steer study magnitude: accuracy and completion length against the steering strength."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from steer_cli.cli.common import doc
from steer_cli.cli.study_cmd import study_app
from steer_cli.cli.study_common import with_eval_options

DEFAULT_SCALES = "0,0.5,0.9,1,1.1,1.5,2"


@study_app.command("magnitude")
@with_eval_options
def magnitude_command(
    vectors: Path = typer.Argument(..., help="Vectors file, or a steering run (its final checkpoint)."),
    scale: str = typer.Option(DEFAULT_SCALES, "--scale", help="Strengths to sweep: factors on the vectors "
                                                               "(scale 1 is always added as a reference)."),
    layers: Optional[str] = typer.Option(None, "--layers", help=doc("inference.layers")),
    model: Optional[str] = typer.Option(None, "--model", help=doc("model.name") + " Default: the file's base model."),
    *,
    opts: dict[str, Any],
) -> None:
    """Accuracy and completion length against the steering strength (--scale), beside base and scale 1."""
    from steer_cli.cli.study_common import flags_of, run_study

    flags = flags_of(opts, model)

    def body(coord: Any) -> Optional[tuple[dict[str, Any], Path]]:
        from steer_cli.cli.study_common import fields_of, interactive, say, study_dir, study_settings
        from steer_cli.evaluate.targets import base_model_of
        from steer_cli.patching.strength import parse_layer_spec, parse_scales
        from steer_cli.study.inputs import vectors_source
        from steer_cli.study.magnitude import magnitude_study

        scales = parse_scales(scale)
        subset = parse_layer_spec(layers) if layers else None
        source = vectors_source(vectors)
        given = dict(flags)
        if given["model.name"] is None:
            given["model.name"] = base_model_of(vectors=source.path)
            if coord.main:
                say(f"base model from {source.path}: {given['model.name']}")
        settings = study_settings(preset=opts["preset"], config=opts["config"], sets=opts["sets"], flags=given,
                                  run=source.run)
        out = study_dir(settings, "magnitude")
        study = magnitude_study(settings, source.path, scales, out=out, layers=subset,
                                fields=fields_of(opts["fields"]), interactive=interactive(), coord=coord,
                                plot_dir=opts["plot"])
        return (study, out) if study else None

    run_study(body, as_json=opts["as_json"], show=show_magnitude)


def show_magnitude(study: dict[str, Any]) -> None:
    from steer_cli.cli.study_common import percent, print_grid

    r = study["results"]
    refs = r["references"]
    rows = [f"{s:g}" for s in r["scales"]] + ["base"]
    lengths = r["length"]["mean"] + [refs["base"].get("length")]
    accuracy = r["accuracy"]["average"] + [refs["base"].get("average")]
    print_grid("steer study magnitude: Average accuracy (%) and mean completion length against scale", rows,
               ["accuracy", "tokens"], [[percent(a), "-" if n is None else f"{n:.1f}"] for a, n in zip(accuracy, lengths)],
               fmt=str, corner="scale")
