"""steer eval: the paper's benchmarks and protocols on a base model, vectors, an adapter or a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer

from steer_cli.cli import app
from steer_cli.cli.common import (
    CONFIG_HELP,
    PRESET_HELP,
    SET_HELP,
    doc,
    is_interactive,
    parse_int_list,
    parse_str_list,
    run_command,
    settings_from_cli,
)
from steer_cli.errors import SteerError, WriteError, say
from steer_cli.runs import latest_run

RUN_HELP = ("Training run directories, or their checkpoints (final, checkpoint-N), to evaluate with their "
            "settings; a directory holding runs (e.g. runs/) means every run under it; default: the most "
            "recent run under runs/ when no --model/--vectors/--adapter is given.")


@app.command("eval")
def eval_command(
    runs: Optional[list[Path]] = typer.Argument(None, help=RUN_HELP, show_default=False),
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
    checkpoints: Optional[str] = typer.Option(None, "--checkpoints", help=doc("eval.checkpoints")),
    prefill: Optional[str] = typer.Option(None, "--prefill", help=doc("prompt.prefill")),
    prefill_multi_token: bool = typer.Option(False, "--prefill-multi-token", help=doc("prompt.prefill_multi_token")),
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
    """Evaluate on the paper's benchmarks (avg@32 / pass@1; greedy base vs sampled trained; seeds).

    Runs unchanged under torchrun / accelerate launch: the work is split across the processes."""
    summaries = run_command(
        _eval, runs=runs or [], model=model, vectors=vectors, adapter=adapter, print_settings=print_settings,
        fields=fields, base=base, preset=preset, config=config, sets=sets,
        raw={"benchmarks": benchmarks, "seeds": seeds},
        flags={
            "model.name": model, "eval.data_dir": data_dir, "eval.samples": samples,
            "eval.temperature": temperature, "eval.limit": limit, "eval.max_new_tokens": max_new_tokens,
            "rollout.backend": backend, "output.output_dir": output_dir,
            "inference.scale": scale, "inference.layers": layers, "eval.reward": reward,
            "eval.checkpoints": checkpoints,
            "prompt.prefill": prefill, "prompt.prefill_multi_token": prefill_multi_token or None,
            "output.overwrite": overwrite or None,
            "model.trust_remote_code": trust_remote_code or None,
        },
    )
    if summaries:
        from rich.table import Table

        from steer_cli.evaluate.summary import results_table
        from steer_cli.terminal import print_table, print_text, stdout_console

        console = stdout_console()
        for part in results_table(summaries).renderables:
            (print_table if isinstance(part, Table) else print_text)(console, part)


def info(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(message)


def _eval(*, print_settings: bool, raw: dict[str, Optional[str]], flags: dict[str, Any],
          **kwargs: Any) -> Optional[list[dict]]:
    """Under torchrun / accelerate launch every process runs this; the main process prints."""
    from steer_cli.evaluate.parallel import Coordinator, ReportedByMain

    coord = Coordinator.connect()
    try:
        return _eval_all(coord, print_settings=print_settings, raw=raw, flags=flags, **kwargs)
    except ReportedByMain as err:
        coord.wait_reported()
        raise typer.Exit(err.exit_code) from None  # the main process prints the error
    except (SteerError, WriteError) as err:
        if not coord.main:
            raise  # this process's own error (while generating): it prints it
        try:
            say(f"error: {err}")
            raise typer.Exit(err.exit_code) from None
        finally:
            coord.reported()


def _eval_all(coord: Any, *, runs: list[Path], vectors: Optional[Path], adapter: Optional[Path],
              print_settings: bool, base: Optional[bool], raw: dict[str, Optional[str]], flags: dict[str, Any],
              **kwargs: Any) -> Optional[list[dict]]:
    from steer_cli.evaluate.run import evaluate
    from steer_cli.evaluate.targets import plan_targets

    say = info if coord.main else (lambda message: None)

    def resolve() -> tuple[list[tuple[Optional[Path], list[Path], Any]], Any]:
        full = dict(flags, **{"eval.benchmarks": parse_str_list(raw["benchmarks"]),
                              "eval.seeds": parse_int_list(raw["seeds"], "--seeds")})
        return _resolve(runs=runs, vectors=vectors, adapter=adapter, flags=full, say=say, **kwargs)

    plans, field_map = coord.agree("settings", resolve)  # every run's settings before anything is evaluated
    if print_settings:
        if coord.main:
            for run_dir, _, settings in plans:
                print((f"# {run_dir}\n" if len(plans) > 1 else "") + settings.to_yaml(), end="")
        return None
    summaries = []
    based: set[str] = set()
    for run_dir, checkpoints, settings in plans:
        with_base = base
        if run_dir is not None:
            # The base model is evaluated once per model and protocol, beside the first of its runs.
            key = settings.model_dump_json(include={"model", "prompt", "eval", "rollout"})
            with_base = base if base is not None else key not in based
            based.add(key)
            what = ", ".join(c.name for c in checkpoints)
            say(f"evaluating training run {run_dir} ({what})" if runs else
                f"evaluating the most recent training run: {run_dir} ({what})")
        targets = coord.agree("targets", lambda: plan_targets(settings, run=run_dir, checkpoints=checkpoints,
                                                                 vectors=vectors, adapter=adapter, with_base=with_base))
        done = evaluate(settings, targets, fields=field_map, interactive=is_interactive(), coord=coord)
        summaries.extend((x, run_dir) for x in done)
    if len(plans) == 1:
        return [x for x, _ in summaries]
    # Several runs: name the table's columns by run (they would all read "final").
    bases = sum(x["label"] == "base" for x, _ in summaries)
    out = []
    for x, run_dir in summaries:
        name = _run_name(run_dir, [r for r, _, _ in plans])
        if x["label"] == "base":
            label = "base" if bases == 1 else f"base ({name})"
        else:
            label = name if x["label"] == "final" else f"{name} {x['label']}"
        out.append(dict(x, label=label))
    return out


def _resolve(*, runs: list[Path], model: Optional[str], vectors: Optional[Path], adapter: Optional[Path],
             fields: Optional[str], preset: Optional[str], config: Optional[Path], sets: Optional[list[str]],
             flags: dict[str, Any], say: Callable[[str], None]) -> tuple[list[tuple[Any, Any, Any]], Any]:
    """(run, checkpoints, settings) of everything to evaluate (None and [] for a model) and the field
    map, from the command line; reads only."""
    from steer_cli.data.records import FieldMap
    from steer_cli.evaluate.targets import base_model_of, resolve_run, run_checkpoints, run_settings_layer

    if vectors is not None and adapter is not None:
        raise SteerError("--vectors and --adapter together: evaluate one trained thing at a time")
    field_map = FieldMap.from_spec(fields) if fields else None
    names_model = (model or vectors or adapter or preset or config
                   or any(s.strip().startswith("model.name=") for s in sets or []))
    if runs:
        if vectors is not None or adapter is not None:
            raise SteerError("a training run already names what to evaluate; drop --vectors/--adapter, or drop RUN")
        named = _resolve_runs(runs)
        if len(named) > 1 and flags.get("output.output_dir"):
            raise SteerError(f"--output-dir names one directory, but {len(named)} runs are to be evaluated; "
                             "drop it (each run's results go to <run>/eval/) or pass one run")
    elif not names_model:
        runs_dir = settings_from_cli(preset=None, config=None, sets=sets, flags={}, infer_preset=False).output.runs_dir
        named = [(resolve_run(latest_run(runs_dir, kind="train"))[0], None)]
    else:
        if model is None and (vectors is not None or adapter is not None):
            flags = dict(flags, **{"model.name": base_model_of(vectors=vectors, adapter=adapter)})
            say(f"base model from {vectors or adapter}: {flags['model.name']}")
        return [(None, [], settings_from_cli(preset=preset, config=config, sets=sets, flags=flags))], field_map
    plans = []
    for run_dir, checkpoint in named:
        settings = settings_from_cli(preset=preset, config=config, sets=sets, flags=flags,
                                     base=run_settings_layer(run_dir), infer_preset=False)
        wanted = settings.eval.checkpoints
        if checkpoint is not None and wanted != ["final"]:
            raise SteerError(f"{checkpoint} is one checkpoint, but --checkpoints {','.join(wanted)} picks checkpoints "
                             f"of a run; pass the run {run_dir} instead, or drop --checkpoints")
        plans.append((run_dir, [checkpoint] if checkpoint is not None else run_checkpoints(run_dir, wanted),
                      settings))
    return plans, field_map


def _resolve_runs(paths: list[Path]) -> list[tuple[Path, Optional[Path]]]:
    """(run, checkpoint) of each argument, the checkpoint None where the argument is the run itself
    (``eval.checkpoints`` then picks); a directory that is not a run stands for the runs under it."""
    from steer_cli.evaluate.targets import resolve_run
    from steer_cli.runs import training_runs_under

    found: list[tuple[Path, Optional[Path]]] = []
    for path in paths:
        try:
            run, checkpoint = resolve_run(path)
        except SteerError:
            under = training_runs_under(path) if Path(path).is_dir() else []
            if not under:
                raise
            found.extend((r, None) for r in under)
            continue
        found.append((run, None if Path(path).expanduser().resolve() == run.resolve() else checkpoint))
    unique = list(dict.fromkeys((r.resolve(), c.resolve() if c else None) for r, c in found))
    if len(unique) < len(found):
        found = [next(x for x in found if (x[0].resolve(), x[1].resolve() if x[1] else None) == u) for u in unique]
    return found


def _run_name(run: Path, all_runs: list[Path]) -> str:
    """A run's path below the runs' common directory (runs/demo/demo/lora/seed-0 -> lora/seed-0)."""
    import os

    common = Path(os.path.commonpath([str(r.resolve()) for r in all_runs]))
    rel = run.resolve().relative_to(common)
    return str(rel) if str(rel) != "." else run.name
