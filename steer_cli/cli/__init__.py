"""The ``steer`` command. Subcommands live in one small module each and import heavy libraries
(torch, transformers, vLLM) only inside their bodies, so ``steer --help`` answers at once."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from steer_cli import __version__
from steer_cli.errors import Interrupted, SteerError

app = typer.Typer(
    name="steer",
    help="Train, evaluate, extract, merge, read and report RL-trained steering vectors for LLM reasoning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"steer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """steer: RL-trained steering vectors for LLM reasoning."""


def _register() -> None:
    from steer_cli.cli import (  # noqa: F401  (each module adds its command to `app`)
        bench_cmd,
        eval_cmd,
        extract_cmd,
        generate_cmd,
        lens_cmd,
        merge_cmd,
        presets_cmd,
        report_cmd,
        study_cmd,
        train_cmd,
    )


def main(argv: Optional[list[str]] = None) -> None:
    _register()
    try:
        app(args=argv, prog_name="steer")
    except SteerError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        sys.exit(Interrupted.exit_code)
