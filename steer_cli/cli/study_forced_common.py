"""Shared plumbing of the token-level study commands (tokens, patch, persistence): the vectors
argument, the settings built on the run's own, the output flags and --json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from steer_cli.cli.common import settings_from_cli
from steer_cli.errors import SteerError

VECTORS_HELP = ("Vectors file (.safetensors/.npy) or training run directory; default: the most recent training "
                "run under runs/. A run's settings (model, prompt template, stop tokens, training set) are used.")
MODEL_HELP = "Model to study the vectors on; default: the run's model, or base_model in the file's metadata."
OUTPUT_HELP = "Where study.json, figures/ and the work in progress go (default: runs/study/<experiment>/<run>)."
OVERWRITE_HELP = "Redo the study in --output-dir even if it holds one with other inputs or settings."
JSON_HELP = "Print study.json on stdout instead of the summary."
PLOT_HELP = "Write the figures (figures/*.png)."
CONFIG_HELP = "YAML file of settings, applied over the run's."
SET_HELP = "Override any setting: --set study.tokens.top_k=10 (repeatable)."


def study_inputs(target: Optional[str], *, model: Optional[str], config: Optional[Path], sets: Optional[list[str]],
                 flags: dict[str, Any]) -> tuple[Path, Optional[Path], Any]:
    """(vectors file, its training run or None, settings) from the command line; reads only."""
    from steer_cli.runs import latest_run
    from steer_cli.study.forced_inputs import base_layer, model_name_flag, vectors_and_run

    if target is None:
        runs_dir = settings_from_cli(preset=None, config=None, sets=sets, flags={}, infer_preset=False).output.runs_dir
        target = str(latest_run(runs_dir, kind="train"))
        note(f"using the most recent training run {target}")
    vectors, run = vectors_and_run(target)
    name = model_name_flag(vectors, run, model)
    settings = settings_from_cli(preset=None, config=config, sets=sets, flags=dict(flags, **{"model.name": name}),
                                 base=base_layer(vectors, run), infer_preset=False)
    return vectors, run, settings


def other_vectors(text: Optional[str], flag: str) -> Optional[Path]:
    """A second vectors file or run (``--against``), or None for 'base'."""
    from steer_cli.study.forced_inputs import vectors_and_run

    if text is None or text == "base":
        return None
    if not Path(text).expanduser().exists():
        raise SteerError(f"{flag} {text!r} is neither 'base' nor an existing vectors file or training run")
    return vectors_and_run(text)[0]


def print_json(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False, default=_finite))


def _finite(value: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def note(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(message, markup=False)


def exit_ok() -> None:
    raise typer.Exit(0)
