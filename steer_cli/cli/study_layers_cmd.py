"""steer study layers: accuracy by layer of single-layer runs (Figures 1, 9-11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from steer_cli.cli.common import doc
from steer_cli.cli.study_cmd import study_app
from steer_cli.cli.study_common import with_eval_options


@study_app.command("layers")
@with_eval_options
def layers_command(
    runs: list[Path] = typer.Argument(..., help="Single-layer steering runs (one per layer), or a directory "
                                                "holding them."),
    select: str = typer.Option("final", "--select", help="Checkpoint per run: final, or best (every checkpoint "
                                                         "evaluated, the best Average kept; picked on the test "
                                                         "benchmarks, as the reference does)."),
    all_layers: Optional[Path] = typer.Option(None, "--all", help="The all-layer run, drawn as a reference line."),
    prefill: Optional[str] = typer.Option(None, "--prefill", help="Reference line: the base model with this text "
                                                                  "after the generation prompt (the reference's "
                                                                  "'Append To'). " + doc("prompt.prefill")),
    prefill_multi_token: bool = typer.Option(False, "--prefill-multi-token", help=doc("prompt.prefill_multi_token")),
    model: Optional[str] = typer.Option(None, "--model", help=doc("model.name") + " Default: the runs' model."),
    *,
    opts: dict[str, Any],
) -> None:
    """Accuracy by layer of single-layer runs, beside the base model, the all-layer run and a prefill baseline."""
    from steer_cli.cli.study_common import flags_of, run_study

    flags = dict(flags_of(opts, model), **{"prompt.prefill_multi_token": prefill_multi_token or None})

    def body(coord: Any) -> Optional[tuple[dict[str, Any], Path]]:
        from steer_cli.cli.study_common import fields_of, interactive, study_dir, study_settings
        from steer_cli.errors import SteerError
        from steer_cli.evaluate.targets import resolve_run
        from steer_cli.runs import training_runs_under
        from steer_cli.study.layers import layers_study

        found: list[Path] = []
        for path in runs:
            try:
                found.append(resolve_run(path)[0])
            except SteerError:
                under = training_runs_under(path) if Path(path).is_dir() else []
                if not under:
                    raise
                found.extend(under)
        found = list(dict.fromkeys(found))
        settings = study_settings(preset=opts["preset"], config=opts["config"], sets=opts["sets"], flags=flags,
                                  run=found[0])
        for run in found[1:]:
            other = study_settings(preset=None, config=None, sets=None, flags={}, run=run).model.name
            if model is None and other != settings.model.name:
                raise SteerError(f"{run} trained {other} but {found[0]} trained {settings.model.name}: "
                                 "a layer study compares runs of one model")
        out = study_dir(settings, "layers")
        study = layers_study(settings, found, out=out, select=select, full=all_layers, prefill=prefill,
                             fields=fields_of(opts["fields"]), interactive=interactive(), coord=coord,
                             plot_dir=opts["plot"])
        return (study, out) if study else None

    run_study(body, as_json=opts["as_json"], show=show_layers)


def show_layers(study: dict[str, Any]) -> None:
    from steer_cli.cli.study_common import percent, print_grid
    from steer_cli.study.layers import REFERENCES

    r = study["results"]
    rows = [f"layer {layer} ({ckpt})" for layer, ckpt in zip(r["layers"], r["checkpoints"])]
    values = [[v] for v in r["accuracy"]["average"]]
    for key, entry in r["references"].items():
        rows.append(REFERENCES[key] + (f" '{r['prefill']}'" if key == "prefill" else ""))
        values.append([entry.get("average")])
    print_grid("steer study layers: Average accuracy (%)", rows, ["accuracy"], values, fmt=percent, corner="")
