"""The ``steer`` command. Subcommands live in one small module each and import heavy libraries
(torch, transformers, vLLM) only inside their bodies, so ``steer --help`` answers at once.

Exit codes: 0 done; 2 bad input (``SteerError``); 74 a write the OS refused (``WriteError``: disk
or quota full, I/O error); 75 stopped by SIGTERM/SIGUSR1 (``Interrupted``); 130 Ctrl-C. Each is
one line on stderr, no traceback. No process the command started outlives it (``processes``).
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from steer_cli import __version__
from steer_cli.errors import Interrupted, SteerError, WriteError, say
from steer_cli.preempt import StopSignals
from steer_cli.processes import reaping

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


# A signal outside the places a command handles it itself (training steps, evaluation) still ends
# the command through its cleanup, so the processes it started end with it.
_SIGNAL_DEADLINE_S = 60.0
_STOPPED = "stopped before finishing; what it wrote is complete on disk: run the same command again"


def main(argv: Optional[list[str]] = None) -> None:
    _register()
    with reaping():
        try:
            with StopSignals(_SIGNAL_DEADLINE_S, _STOPPED, interrupt=_STOPPED):
                app(args=argv, prog_name="steer")
        except SteerError as err:
            say(f"error: {err}")
            sys.exit(2)
        except WriteError as err:
            say(f"error: {err}")
            sys.exit(WriteError.exit_code)
        except Interrupted as err:
            say(f"stopped: {err}")
            sys.exit(Interrupted.exit_code)
