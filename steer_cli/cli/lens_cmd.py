"""steer lens: the logit lens on steering vectors (tokens each layer's vector promotes/suppresses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from steer_cli.cli import app
from steer_cli.cli.common import info, run_command


def _say(message: str) -> None:
    from rich.markup import escape

    info(escape(message))


@app.command("lens")
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
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where to look for the most recent run."),
) -> None:
    """Read steering vectors through the logit lens (paper section 4.2)."""
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
                         kind="dot" if dot else "cosine", runs_dir=runs_dir)
    for note in result.notes:
        _say(note)
    if as_json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        lens.render_lens(result, stdout_console(), show=max(1, min(show, top_k)))
    if plot is not None:
        from steer_cli.lens.plots import plot_lens

        _say(f"wrote {run_command(plot_lens, result, plot)}")
