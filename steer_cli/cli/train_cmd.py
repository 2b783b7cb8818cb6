"""steer train: online RLOO training of steering vectors, a LoRA, or the full model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from steer_cli.cli import app
from steer_cli.cli.common import CONFIG_HELP, PRESET_HELP, SET_HELP, doc, info, run_command, settings_from_cli


@app.command("train")
def train_command(
    presets: Optional[list[str]] = typer.Option(None, "--preset", help=PRESET_HELP + " Repeat it to train several steering runs in one job, over one copy of the model."),
    sweeps: Optional[list[str]] = typer.Option(None, "--sweep", help="Train one run per value, all in one job over one copy of the model: --sweep train.seed=0,1,2, --sweep train.lr=1e-3,3e-3, --sweep setup.steering.layers=each (one run per layer; a model preset's per-layer presets give each its learning rate). Repeatable: the product of all. Runs go to --output-dir DIR/<what varies>, else each to its default path."),
    model: Optional[str] = typer.Option(None, "--model", help=doc("model.name")),
    setup: Optional[str] = typer.Option(None, "--setup", help=doc("setup.kind")),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=doc("data.dataset")),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=doc("data.data_dir")),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help=doc("output.output_dir")),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help=doc("train.max_steps")),
    prompts_per_step: Optional[int] = typer.Option(None, "--prompts-per-step", help=doc("train.prompts_per_step")),
    num_generations: Optional[int] = typer.Option(None, "--num-generations", help=doc("rollout.num_generations")),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=doc("rollout.max_new_tokens")),
    lr: Optional[float] = typer.Option(None, "--lr", help=doc("train.lr")),
    save_every: Optional[int] = typer.Option(None, "--save-every", help=doc("train.save_every")),
    backend: Optional[str] = typer.Option(None, "--backend", help=doc("rollout.backend")),
    seed: Optional[int] = typer.Option(None, "--seed", help=doc("train.seed")),
    fsdp: bool = typer.Option(False, "--fsdp", help=doc("train.fsdp")),
    reward: Optional[str] = typer.Option(None, "--reward", help=doc("train.reward")),
    prefill: Optional[str] = typer.Option(None, "--prefill", help=doc("prompt.prefill")),
    prefill_multi_token: bool = typer.Option(False, "--prefill-multi-token", help=doc("prompt.prefill_multi_token")),
    resume: bool = typer.Option(False, "--resume", help=doc("output.resume")),
    overwrite: bool = typer.Option(False, "--overwrite", help=doc("output.overwrite")),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=doc("model.trust_remote_code")),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    print_settings: bool = typer.Option(False, "--print-settings", help="Print the resolved settings as YAML and exit."),
) -> None:
    """Train with online RLOO on math problems, or any reward (--reward); default: the built-in demo, minutes on a CPU."""
    flags = {
        "model.name": model, "setup.kind": setup, "data.dataset": dataset, "data.data_dir": data_dir,
        "output.output_dir": output_dir, "train.max_steps": max_steps,
        "train.prompts_per_step": prompts_per_step, "rollout.num_generations": num_generations,
        "rollout.max_new_tokens": max_new_tokens, "train.lr": lr, "train.save_every": save_every,
        "rollout.backend": backend, "train.seed": seed, "train.fsdp": fsdp or None, "train.reward": reward,
        "prompt.prefill": prefill, "prompt.prefill_multi_token": prefill_multi_token or None,
        "output.resume": resume or None, "output.overwrite": overwrite or None,
        "model.trust_remote_code": trust_remote_code or None,
    }
    if len(presets or []) > 1 or sweeps:
        from steer_cli.cli.train_job import train_job_command

        train_job_command(presets or [], sweeps or [], config=config, sets=sets, flags=flags,
                          print_settings=print_settings)
        return
    preset = presets[0] if presets else None
    settings = run_command(settings_from_cli, preset=preset, config=config, sets=sets, flags=flags)
    if print_settings:
        print(settings.to_yaml(), end="")
        return
    if resume and overwrite:
        from steer_cli.cli.common import fail

        fail("--resume and --overwrite contradict each other; pick one")
    from steer_cli.train.run import train

    result = run_command(train, settings)
    if result is not None:
        info(f"[green]done[/green]: {result}")
