"""Shared CLI plumbing: settings from flags, the most recent run, one-line errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from steer_cli.errors import Interrupted, SteerError, WriteError, say
from steer_cli.settings import (
    Layer,
    Settings,
    build_settings,
    config_layer,
    field_doc,
    flags_layer,
    parse_set,
)

# Flag of each settings key that has one (used in help texts and in error messages).
FLAG_NAMES: dict[str, str] = {
    "model.name": "--model",
    "setup.kind": "--setup",
    "data.dataset": "--dataset",
    "data.data_dir": "--data-dir",
    "output.output_dir": "--output-dir",
    "output.overwrite": "--overwrite",
    "output.resume": "--resume",
    "train.max_steps": "--max-steps",
    "train.prompts_per_step": "--prompts-per-step",
    "train.lr": "--lr",
    "train.save_every": "--save-every",
    "train.seed": "--seed",
    "train.fsdp": "--fsdp",
    "train.reward": "--reward",
    "eval.reward": "--reward",
    "inference.scale": "--scale",
    "inference.layers": "--layers",
    "generate.file": "--file",
    "generate.num_prompts": "--num-prompts",
    "generate.temperature": "--temperature",
    "generate.seed": "--seed",
    "generate.max_new_tokens": "--max-new-tokens",
    "rollout.num_generations": "--num-generations",
    "rollout.max_new_tokens": "--max-new-tokens",
    "rollout.backend": "--backend",
    "eval.benchmarks": "--benchmarks",
    "eval.data_dir": "--data-dir",
    "eval.samples": "--samples",
    "eval.temperature": "--temperature",
    "eval.seeds": "--seeds",
    "eval.limit": "--limit",
    "eval.max_new_tokens": "--max-new-tokens",
    "prompt.prefill": "--prefill",
    "prompt.prefill_multi_token": "--prefill-multi-token",
}


def doc(key: str) -> str:
    """Help text of a flag: the settings field's description, plus the key it sets."""
    return f"{field_doc(key)} \\[{key}]"  # escaped: rich would read [key] as markup


PRESET_HELP = "Preset to start from (see `steer presets`); default: found from --model/--dataset/--setup."
CONFIG_HELP = "YAML file of settings, applied over the preset."
SET_HELP = "Override any setting: --set train.lr=1e-3 (repeatable)."


def settings_from_cli(
    *,
    preset: Optional[str],
    config: Optional[Path],
    sets: Optional[list[str]],
    flags: dict[str, Any],
    base: Optional[Layer] = None,
    infer_preset: bool = True,
    top: Optional[Layer] = None,
) -> Settings:
    """defaults < (base) < preset < --config < --set < flags (< top: a sweep's values)."""
    from steer_cli.presets import find_preset, preset_layer

    layers: list[Layer] = []
    if base is not None:
        layers.append(base)
    if preset is None and infer_preset:
        preset = find_preset(flags.get("model.name"), flags.get("data.dataset"), flags.get("setup.kind"))
    if preset:
        layers.append(preset_layer(preset))
    if config is not None:
        layers.append(config_layer(config))
    if sets:
        layers.append(parse_set(sets))
    layers.append(flags_layer(flags, FLAG_NAMES))
    if top is not None:
        layers.append(top)
    return build_settings(layers)


def parse_int_list(text: Optional[str], flag: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise SteerError(f"{flag} expects comma-separated integers such as 0,1,2, got {text!r}") from None


def parse_str_list(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    return [x.strip() for x in text.split(",") if x.strip()]


SCALE_HELP = ("Strength: multiply the vectors by this factor (0 = the base model, 1 = as trained, negative "
              "turns them around).")
LAYERS_HELP = "Apply the vectors only on these layers, e.g. 0-10,17 (default: every steered layer)."


def one_scale(text: Optional[str], flag: str = "--scale") -> float:
    """A single --scale factor (commands that write one file take one)."""
    from steer_cli.patching.strength import parse_scales

    if text is None:
        return 1.0
    scales = parse_scales(text, flag)
    if len(scales) != 1:
        raise SteerError(f"{flag} takes one factor here, got {text!r}; run the command once per factor")
    return scales[0]


def layer_spec(text: Optional[str], flag: str = "--layers") -> Optional[list[int]]:
    from steer_cli.patching.strength import parse_layer_spec

    return None if text is None else parse_layer_spec(text, flag)


def info(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(message)


def run_command(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a library function; SteerError becomes a one-line message and exit code 2, a write the
    OS refused (WriteError) one line and exit code 74, a stop on SIGTERM/SIGUSR1 (Interrupted) one
    line and exit code 75."""
    try:
        return fn(*args, **kwargs)
    except SteerError as err:
        fail(str(err))
    except WriteError as err:
        say(f"error: {err}")
        raise typer.Exit(WriteError.exit_code) from None
    except Interrupted as err:
        say(f"stopped: {err}")
        raise typer.Exit(Interrupted.exit_code) from None
    except KeyboardInterrupt:
        info("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None


def fail(message: str) -> None:
    say(f"error: {message}")
    raise typer.Exit(2)


def is_interactive() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
