"""steer study transfer: each model's vectors applied to each sibling model (Table 1 of §9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from steer_cli.cli.study_cmd import study_app
from steer_cli.cli.study_common import with_eval_options


@study_app.command("transfer")
@with_eval_options
def transfer_command(
    vectors: str = typer.Option(..., "--vectors", help="Vectors files or steering runs, comma-separated: one per "
                                                       "model, trained on it."),
    models: Optional[str] = typer.Option(None, "--models", help="The models, comma-separated, in the order of "
                                                                "--vectors (default: each file's base model)."),
    *,
    opts: dict[str, Any],
) -> None:
    """Each model's vectors on each sibling model of the same geometry: raw and row-normalised tables."""
    from steer_cli.cli.study_common import flags_of, run_study

    def body(coord: Any) -> Optional[tuple[dict[str, Any], Path]]:
        from steer_cli.cli.common import parse_str_list
        from steer_cli.cli.study_common import fields_of, interactive, say, study_dir, study_settings
        from steer_cli.errors import SteerError
        from steer_cli.evaluate.targets import base_model_of
        from steer_cli.study.inputs import vectors_source
        from steer_cli.study.transfer import transfer_study

        sources = [vectors_source(v) for v in parse_str_list(vectors) or []]
        names = parse_str_list(models) if models else [base_model_of(vectors=s.path) for s in sources]
        if len(names) != len(sources):
            raise SteerError(f"--models names {len(names)} models but --vectors {len(sources)} files; give one "
                             "vectors file per model, in the same order")
        if models is None and coord.main:
            say(f"models from the vectors files: {', '.join(names)}")
        settings_of = [study_settings(preset=opts["preset"], config=opts["config"], sets=opts["sets"],
                                      flags=flags_of(opts, name)) for name in names]
        out = study_dir(settings_of[0], "transfer")
        study = transfer_study(settings_of, sources, out=out, fields=fields_of(opts["fields"]),
                               interactive=interactive(), coord=coord, plot_dir=opts["plot"])
        return (study, out) if study else None

    run_study(body, as_json=opts["as_json"], show=show_transfer)


def show_transfer(study: dict[str, Any]) -> None:
    from steer_cli.cli.study_common import print_grid
    from steer_cli.models import model_slug

    r = study["results"]
    rows = [model_slug(m) for m in r["models"]]
    print_grid("steer study transfer: Average accuracy (%), target model (rows) with the vectors of (columns)",
               rows, rows + ["base"], r["matrix"]["average"], corner="to \\ from")
    print_grid("row-normalised: (v - base) / (own - base)", rows, rows, r["normalized"]["average"],
               fmt=lambda v: "-" if v is None else f"{v:.2f}", corner="to \\ from")
