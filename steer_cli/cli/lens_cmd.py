"""steer lens: the logit lens on steering vectors (tokens each layer's vector promotes/suppresses),
and ``steer lens train-tuned`` (cli/lens_tuned_cmd.py).

``steer lens`` is a group whose default command reads vectors: ``steer lens FILE --layer 17``
runs it as it always has, and a first argument naming a subcommand (``train-tuned``) runs that
instead. A file literally named like a subcommand is read as ``./train-tuned``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from steer_cli.cli import app
from steer_cli.cli.common import info, run_command

READ = "read"  # the default command's name (hidden; `steer lens read FILE` also works)


class LensGroup(TyperGroup):
    """Runs the hidden ``read`` command unless the first argument names another subcommand."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = [READ, *args]
        return super().parse_args(ctx, args)


class ReadCommand(TyperCommand):
    """The reading command; its usage line says ``steer lens``, not ``steer lens read``."""

    def get_usage(self, ctx: Any) -> str:
        return super().get_usage(ctx).replace(f" {READ} ", " ", 1)


lens_app = typer.Typer(cls=LensGroup, help="Read steering vectors through the logit lens or a tuned lens; "
                       "`steer lens train-tuned` trains a tuned lens.")
app.add_typer(lens_app, name="lens")

# Subcommands beside the default one; each module adds its command to `lens_app` when imported.
LENS_COMMANDS: tuple[str, ...] = ("tuned",)


def _say(message: str) -> None:
    from rich.markup import escape

    info(escape(message))


@lens_app.command(READ, hidden=True, cls=ReadCommand)
def lens_command(
    target: Optional[str] = typer.Argument(
        None, help="Vectors file (.safetensors/.npy) or training run directory; default: the most recent run under runs/."),
    model: Optional[str] = typer.Option(None, "--model", help="Model whose unembedding reads the vectors; default: base_model in the file's metadata."),
    layer: Optional[list[int]] = typer.Option(None, "--layer", "-l", help="Layer to show (repeatable); default: every layer with a non-zero vector."),
    top_k: int = typer.Option(50, "--top-k", help="Promoted and suppressed tokens per layer (in --json)."),
    show: int = typer.Option(10, "--show", help="Tokens per layer shown in the table (at most --top-k)."),
    dot: bool = typer.Option(False, "--dot", help="Score with the raw dot product <s_l, u_v> instead of the cosine."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON on stdout instead of tables."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: norms, layer x layer cosines, singular values, score histograms."),
    compare: Optional[str] = typer.Option(None, "--compare", help="Second vectors file or run: print the per-layer cosine between the two (no model needed)."),
    tuned: Optional[Path] = typer.Option(None, "--tuned", help="Tuned-lens directory (config.json + params.pt, from `steer lens train-tuned` or the tuned-lens library): read each vector as A s, its layer's translator without the bias."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where to look for the most recent run."),
) -> None:
    """Read steering vectors through the logit lens (paper section 4.2), or through a tuned lens
    with --tuned DIR. Train one with `steer lens train-tuned` (see its --help)."""
    from steer_cli.lens import compare as lens_compare
    from steer_cli.lens import logit as lens
    from steer_cli.terminal import stdout_console

    if compare is not None:
        result = run_command(lens_compare.compare_vectors, target, compare, runs_dir=runs_dir)
        for note in result.notes:
            _say(note)
        if as_json:
            print(json.dumps(result.to_json(), indent=2))
        else:
            lens_compare.render_compare(result, stdout_console())
        if plot is not None:
            from steer_cli.lens.plots import plot_compare

            _say(f"wrote {run_command(plot_compare, result, plot)}")
        return
    result = run_command(lens.run_lens, target, model=model, layers=layer or None, top_k=top_k,
                         kind="dot" if dot else "cosine", runs_dir=runs_dir, tuned=tuned)
    for note in result.notes:
        _say(note)
    if as_json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        lens.render_lens(result, stdout_console(), show=max(1, min(show, top_k)))
    if plot is not None:
        from steer_cli.lens.plots import plot_lens

        _say(f"wrote {run_command(plot_lens, result, plot)}")
        if result.tuned is not None:
            from steer_cli.lens.tuned_plot import plot_directions

            t = result.tuned
            shown = [i for i, c in enumerate(t["cosine"]) if c is not None]
            extra = plot.with_name(f"{plot.stem}-tuned{plot.suffix or '.png'}")
            source = Path(result.vectors_path)
            name = source.parent.parent.name if source.parent.name == "final" else source.name
            title = f"{name} through the tuned lens {Path(t['dir']).name}"
            written = run_command(plot_directions, shown, [t["cosine"][i] for i in shown],
                                  [t["norm_ratio"][i] for i in shown], title, extra)
            _say(f"wrote {written}")


for _name in LENS_COMMANDS:
    importlib.import_module(f"steer_cli.cli.lens_{_name}_cmd")
