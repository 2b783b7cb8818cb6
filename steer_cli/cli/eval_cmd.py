"""steer eval: the paper's benchmarks and protocols on a base model, vectors, an adapter or a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from steer_cli.cli import app
from steer_cli.cli.common import (
    CONFIG_HELP,
    PRESET_HELP,
    SET_HELP,
    doc,
    is_interactive,
    latest_run,
    parse_int_list,
    parse_str_list,
    run_command,
    settings_from_cli,
)
from steer_cli.errors import SteerError

RUN_HELP = ("Training run directory, or one of its checkpoints (final, checkpoint-N), to evaluate with its "
            "settings; default: the most recent run under runs/ when no --model/--vectors/--adapter is given.")


@app.command("eval")
def eval_command(
    run: Optional[Path] = typer.Argument(None, help=RUN_HELP, show_default=False),
    model: Optional[str] = typer.Option(None, "--model", help=doc("model.name")),
    vectors: Optional[Path] = typer.Option(None, "--vectors", help="Steering vectors file to add to the model."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="PEFT LoRA adapter directory to add to the model."),
    benchmarks: Optional[str] = typer.Option(None, "--benchmarks", help=doc("eval.benchmarks")),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=doc("eval.data_dir")),
    samples: Optional[int] = typer.Option(None, "--samples", help=doc("eval.samples")),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=doc("eval.temperature")),
    seeds: Optional[str] = typer.Option(None, "--seeds", help=doc("eval.seeds")),
    limit: Optional[int] = typer.Option(None, "--limit", help=doc("eval.limit")),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=doc("eval.max_new_tokens")),
    backend: Optional[str] = typer.Option(None, "--backend", help=doc("rollout.backend")),
    scale: Optional[str] = typer.Option(None, "--scale", help=doc("inference.scale") + " One result per scale."),
    layers: Optional[str] = typer.Option(None, "--layers", help=doc("inference.layers")),
    reward: Optional[str] = typer.Option(None, "--reward", help=doc("eval.reward")),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o",
                                             help="Output directory (default: <run>/eval/<checkpoint> and "
                                                  "<run>/eval/base, or runs/eval/<model>/<what>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo the evaluation in an existing output directory."),
    base: Optional[bool] = typer.Option(None, "--base/--no-base",
                                        help="Also evaluate the base model (default: yes for a run, no otherwise)."),
    fields: Optional[str] = typer.Option(None, "--fields",
                                         help="Columns of benchmark files given as paths: problem=COL,answer=COL"
                                              "[,id=COL][,kind=plain|gsm8k|boxed_in|list] (default: guessed)."),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=doc("model.trust_remote_code")),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    print_settings: bool = typer.Option(False, "--print-settings", help="Print the resolved settings as YAML and exit."),
) -> None:
    """Evaluate on the paper's benchmarks (avg@32 / pass@1; greedy base vs sampled trained; seeds)."""
    summaries = run_command(
        _eval, run=run, model=model, vectors=vectors, adapter=adapter, print_settings=print_settings,
        fields=fields, base=base, preset=preset, config=config, sets=sets,
        flags={
            "model.name": model, "eval.data_dir": data_dir, "eval.samples": samples,
            "eval.temperature": temperature, "eval.limit": limit, "eval.max_new_tokens": max_new_tokens,
            "rollout.backend": backend, "output.output_dir": output_dir,
            "inference.scale": scale, "inference.layers": layers, "eval.reward": reward,
            "output.overwrite": overwrite or None,
            "model.trust_remote_code": trust_remote_code or None,
            "eval.benchmarks": run_command(parse_str_list, benchmarks),
            "eval.seeds": run_command(parse_int_list, seeds, "--seeds"),
        },
    )
    if summaries:
        from rich.console import Console

        from steer_cli.evaluate import results_table

        Console(highlight=False).print(results_table(summaries))


def info(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(message)


def _eval(*, run: Optional[Path], model: Optional[str], vectors: Optional[Path], adapter: Optional[Path],
          print_settings: bool, fields: Optional[str], base: Optional[bool], preset: Optional[str],
          config: Optional[Path], sets: Optional[list[str]], flags: dict[str, Any]) -> Optional[list[dict]]:
    from steer_cli import evaluate as ev
    from steer_cli.data.records import FieldMap

    if vectors is not None and adapter is not None:
        raise SteerError("--vectors and --adapter together: evaluate one trained thing at a time")
    field_map = FieldMap.from_spec(fields) if fields else None
    run_dir = checkpoint = None
    names_model = (model or vectors or adapter or preset or config
                   or any(s.strip().startswith("model.name=") for s in sets or []))
    if run is not None:
        run_dir, checkpoint = ev.resolve_run(run)
        info(f"evaluating training run {run_dir} ({checkpoint.name})")
    elif not names_model:
        runs_dir = settings_from_cli(preset=None, config=None, sets=sets, flags={}, infer_preset=False).output.runs_dir
        run_dir, checkpoint = ev.resolve_run(latest_run(runs_dir, kind="train"))
        info(f"evaluating the most recent training run: {run_dir} ({checkpoint.name})")
    if run_dir is not None:
        settings = settings_from_cli(preset=preset, config=config, sets=sets, flags=flags,
                                     base=ev.run_settings_layer(run_dir), infer_preset=False)
    else:
        if model is None and (vectors is not None or adapter is not None):
            flags = dict(flags, **{"model.name": ev.base_model_of(vectors=vectors, adapter=adapter)})
            info(f"base model from {vectors or adapter}: {flags['model.name']}")
        settings = settings_from_cli(preset=preset, config=config, sets=sets, flags=flags)
    if print_settings:
        print(settings.to_yaml(), end="")
        return None
    targets = ev.plan_targets(settings, run=run_dir, checkpoint=checkpoint, vectors=vectors, adapter=adapter,
                              with_base=base)
    return ev.evaluate(settings, targets, fields=field_map, interactive=is_interactive())
