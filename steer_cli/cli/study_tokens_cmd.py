"""steer study tokens: the vectors' probability changes per generated position (first vs rest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from steer_cli.cli.common import doc, run_command
from steer_cli.cli.study_cmd import study_app
from steer_cli.cli.study_common import (
    FORCED_CONFIG_HELP,
    FORCED_JSON_HELP,
    FORCED_OUTPUT_HELP,
    FORCED_OVERWRITE_HELP,
    FORCED_PLOT_HELP,
    FORCED_SET_HELP,
    MODEL_HELP,
    VECTORS_HELP,
    other_vectors,
    print_json,
    say,
    study_inputs,
)

HELP = (
    "Is the vector a token-substitution bias on the first generated token? (companion paper, section 6)\n\n"
    "Samples one completion per prompt with the vectors, teacher-forces it with and without them (or "
    "--against a second vectors file), and streams per-position statistics: KL(reference || steered), the "
    "most promoted and suppressed tokens, both argmaxes, and the probability change of one token (--token; "
    "default: the one the vectors promote most at the first position), at the first generated position "
    "against the rest. Completions cut at their budget are kept. Writes study.json, samples.jsonl and "
    "figures/*.png; a stopped study continues where it stopped."
)


@study_app.command("tokens", help=HELP)
def tokens_command(
    vectors: Optional[str] = typer.Argument(None, metavar="VECTORS", help=VECTORS_HELP, show_default=False),
    against: Optional[str] = typer.Option(None, "--against", help=doc("study.tokens.against")),
    layers: Optional[str] = typer.Option(None, "--layers", help=doc("inference.layers")),
    scale: Optional[str] = typer.Option(None, "--scale", help="Strength: one factor on the vectors (both files)."),
    token: Optional[str] = typer.Option(None, "--token", help=doc("study.tokens.token")),
    prompts: Optional[int] = typer.Option(None, "--prompts", help=doc("study.tokens.prompts")),
    seed: Optional[int] = typer.Option(None, "--seed", help=doc("study.tokens.seed")),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=doc("study.tokens.temperature")),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=doc("study.tokens.max_new_tokens")),
    batch: Optional[int] = typer.Option(None, "--batch", help=doc("study.tokens.batch")),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help=FORCED_OUTPUT_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=FORCED_OVERWRITE_HELP),
    plot: bool = typer.Option(True, "--plot/--no-plot", help=FORCED_PLOT_HELP),
    as_json: bool = typer.Option(False, "--json", help=FORCED_JSON_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help=FORCED_CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=FORCED_SET_HELP),
) -> None:
    flags = {"inference.layers": layers, "inference.scale": scale, "study.tokens.token": token,
             "study.tokens.prompts": prompts, "study.tokens.seed": seed, "study.tokens.temperature": temperature,
             "study.tokens.max_new_tokens": max_new_tokens, "study.tokens.batch": batch,
             "output.overwrite": overwrite or None}
    out = run_command(_tokens, vectors, against=against, model=model, config=config, sets=sets, flags=flags,
                      output_dir=output_dir, plot=plot)
    if as_json:
        print_json(out)
    else:
        from steer_cli.study.render import render_tokens
        from steer_cli.terminal import stdout_console

        render_tokens(out, stdout_console())


def _tokens(target: Optional[str], *, against: Optional[str], model: Optional[str], config: Optional[Path],
            sets: Optional[list[str]], flags: dict[str, Any], output_dir: Optional[Path], plot: bool) -> Any:
    from steer_cli.cli.common import is_interactive
    from steer_cli.study.tokens import run_tokens

    path, run, settings = study_inputs(target, model=model, config=config, sets=sets,
                                       flags=dict(flags, **{"study.tokens.against": against}))
    second = other_vectors(settings.study.tokens.against, "--against")
    doc_, out = run_tokens(settings, path, run, against=second, output_dir=output_dir,
                           interactive=is_interactive(), plot=plot)
    say(f"results in {out}")
    return doc_
