"""steer generate: base and steered completions of a few prompts, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from steer_cli.cli import app
from steer_cli.cli.common import (
    CONFIG_HELP,
    SET_HELP,
    doc,
    info,
    run_command,
    settings_from_cli,
)
from steer_cli.errors import SteerError
from steer_cli.runs import latest_run

GENERATE_HELP = (
    "Complete a few prompts with the base model and with trained vectors (or an adapter), side by side.\n\n"
    "Prompts come as arguments, or with --file (one per line, or JSONL with a problem/prompt field); with "
    "neither, the first few problems of the run's dataset. The trained side is --run RUN (a training run or "
    "checkpoint), --vectors FILE or --adapter DIR; with none of them, the most recent training run under runs/. "
    "Prompts use the run's template and stop tokens. --scale 0,0.5,1 shows one steered column per strength. "
    "--json prints a JSON list of {prompt, base, steered} objects (with \"scale\" when several are given)."
)


@app.command("generate", help=GENERATE_HELP)
def generate_command(
    prompts: Optional[list[str]] = typer.Argument(None, metavar="PROMPT", show_default=False,
                                                  help=doc("generate.prompts")),
    run: Optional[Path] = typer.Option(None, "--run", help="Training run (or one of its checkpoints) whose "
                                                           "vectors, adapter or weights to use."),
    vectors: Optional[Path] = typer.Option(None, "--vectors", help="Steering vectors file to add to the model."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="PEFT LoRA adapter directory to add to the model."),
    model: Optional[str] = typer.Option(None, "--model", help=doc("model.name")),
    file: Optional[str] = typer.Option(None, "--file", help=doc("generate.file")),
    num_prompts: Optional[int] = typer.Option(None, "--num-prompts", help=doc("generate.num_prompts")),
    scale: Optional[str] = typer.Option(None, "--scale", help=doc("inference.scale")),
    layers: Optional[str] = typer.Option(None, "--layers", help=doc("inference.layers")),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=doc("generate.temperature")),
    seed: Optional[int] = typer.Option(None, "--seed", help=doc("generate.seed")),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=doc("generate.max_new_tokens")),
    backend: Optional[str] = typer.Option(None, "--backend", help=doc("rollout.backend")),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {prompt, base, steered} objects."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    print_settings: bool = typer.Option(False, "--print-settings", help="Print the resolved settings as YAML and exit."),
) -> None:
    flags = {
        "model.name": model, "generate.prompts": list(prompts) if prompts else None, "generate.file": file,
        "generate.num_prompts": num_prompts, "inference.scale": scale, "inference.layers": layers,
        "generate.temperature": temperature, "generate.seed": seed, "generate.max_new_tokens": max_new_tokens,
        "rollout.backend": backend,
    }
    out = run_command(_generate, run=run, vectors=vectors, adapter=adapter, config=config, sets=sets,
                      flags=flags, print_settings=print_settings)
    if out is None:
        return
    if as_json:
        import json

        print(json.dumps(out.rows(), ensure_ascii=False, indent=2))
    else:
        _print_table(out)


def _generate(*, run: Optional[Path], vectors: Optional[Path], adapter: Optional[Path], config: Optional[Path],
              sets: Optional[list[str]], flags: dict[str, Any], print_settings: bool) -> Any:
    from steer_cli.evaluate.generate import dataset_prompts, generate, read_prompt_file
    from steer_cli.evaluate.targets import base_model_of, plan_targets, resolve_run, run_settings_layer

    if sum(x is not None for x in (run, vectors, adapter)) > 1:
        raise SteerError("give one of --run, --vectors and --adapter: the trained side of the comparison")
    run_dir = checkpoint = None
    if run is not None:
        run_dir, checkpoint = resolve_run(run)
    elif vectors is None and adapter is None:
        if flags.get("model.name"):
            raise SteerError("--model alone leaves nothing to compare with; add --vectors FILE or --adapter DIR, "
                             "or pass --run RUN")
        runs_dir = settings_from_cli(preset=None, config=None, sets=sets, flags={}, infer_preset=False).output.runs_dir
        run_dir, checkpoint = resolve_run(latest_run(runs_dir, kind="train"))
        info(f"using the most recent training run: {run_dir} ({checkpoint.name})")
    if run_dir is not None:
        settings = settings_from_cli(preset=None, config=config, sets=sets, flags=flags,
                                     base=run_settings_layer(run_dir), infer_preset=False)
    else:
        if flags.get("model.name") is None:
            flags = dict(flags, **{"model.name": base_model_of(vectors=vectors, adapter=adapter)})
        settings = settings_from_cli(preset=None, config=config, sets=sets, flags=flags, infer_preset=False)
    if print_settings:
        print(settings.to_yaml(), end="")
        return None
    (target,) = plan_targets(settings, run=run_dir, checkpoint=checkpoint, vectors=vectors, adapter=adapter,
                                with_base=False, strengths=False)
    g = settings.generate
    prompts = list(g.prompts)
    if g.file:
        prompts += read_prompt_file(g.file)
    if not prompts:
        prompts = dataset_prompts(settings, g.num_prompts)
        info(f"no prompts given: the first {len(prompts)} problems of {settings.data.dataset}")
    return generate(settings, target, prompts)


def _print_table(out: Any) -> None:
    """Rich columns on a terminal; off a terminal one row a line (newlines as \\n), never wrapped."""
    from rich.markup import escape
    from rich.table import Table

    from steer_cli.patching.strength import format_scale
    from steer_cli.terminal import print_table, stdout_console

    several = len(out.steered) > 1
    headers = ["Prompt", "Base"] + [f"Steered (scale {format_scale(s)})" if several else "Steered"
                                    for s in out.steered]
    table = Table(*headers, show_lines=True)
    for i, prompt in enumerate(out.prompts):
        table.add_row(*(escape(x) for x in [prompt, out.base[i], *(texts[i] for texts in out.steered.values())]))
    print_table(stdout_console(), table)
