"""steer study: the companion paper's experiments on trained vectors (a typer sub-app).

Each experiment registers its command on ``study_app`` from its own small module
(``cli/study_<experiment>_cmd.py``), listed in ``STUDY_COMMANDS`` below.
"""

from __future__ import annotations

import importlib

import typer

from steer_cli.cli import app

study_app = typer.Typer(
    name="study",
    help="The companion paper's experiments on trained vectors: where the gain lives and how it acts.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")

# One module per experiment; each adds its command to `study_app` when imported.
STUDY_COMMANDS: tuple[str, ...] = (
    "layers", "pairs", "transfer", "magnitude", "seeds", "adaptive", "tokens", "patch", "persistence",
)

for _name in STUDY_COMMANDS:
    importlib.import_module(f"steer_cli.cli.study_{_name}_cmd")
