"""steer extract: vectors from a run, checkpoint or matrix -> one vectors file (safetensors, npy or gguf)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from steer_cli.cli import app
from steer_cli.cli.common import LAYERS_HELP, SCALE_HELP, info, layer_spec, one_scale, run_command

SOURCE_HELP = ("What to read: a training run (its final/, else its latest checkpoint-N/), a steer checkpoint or "
               "vectors file, an .npy \\[num_layers, hidden] matrix, or a transformers checkpoint directory holding "
               "the vectors as model.layers.{i}.mlp.down_proj.bias or steering_matrix_A/B (read with safetensors "
               "only). Default: the most recent training run under runs/.")

EXTRACT_HELP = (
    "Extract steering vectors into one file.\n\n"
    "Reads SOURCE and writes -o FILE as a steer vectors file (safetensors: one float32 \\[num_layers, hidden] "
    "tensor `vectors` plus metadata: base model, layers, place, source), an .npy matrix (the numbers only), or a "
    "llama.cpp control vector (.gguf: general.architecture controlvector, controlvector.model_hint, "
    "controlvector.layer_count, one F32 1-D tensor direction.N per steered layer). The format comes from "
    "--format, else from the suffix of -o (.npy, .gguf), else safetensors.\n\n"
    "GGUF layer numbering: direction.N is added to the output of decoder layer N counted from 0 (llama.cpp adds "
    "it after that layer's residual add, at every position), so steer's row N is written as direction.N, "
    "unchanged. llama.cpp cannot steer layer 0 (it rejects direction.0): a non-zero row 0 needs --drop-layer-0."
)


@app.command("extract", help=EXTRACT_HELP)
def extract_command(
    source: Optional[Path] = typer.Argument(None, metavar="SOURCE", help=SOURCE_HELP, show_default=False),
    output: Path = typer.Option(..., "--output", "-o", help="File to write (refused if it exists, unless --overwrite).",
                                show_default=False),
    fmt: Optional[str] = typer.Option(None, "--format", "-f",
                                      help="safetensors | npy | gguf (default: from the -o suffix, else safetensors)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file (atomically)."),
    drop_layer_0: bool = typer.Option(False, "--drop-layer-0",
                                      help="gguf only: leave out layer 0, which llama.cpp cannot steer."),
    place: Optional[str] = typer.Option(None, "--place",
                                        help="layer_output | down_proj_bias: where the vectors go, for an .npy "
                                             "source, which does not record it (default: down_proj_bias, the "
                                             "reference implementation's)."),
    scale: Optional[str] = typer.Option(None, "--scale", help=SCALE_HELP + " The matrix written is scaled."),
    layers: Optional[str] = typer.Option(None, "--layers", help=LAYERS_HELP + " Other rows are written as zeros "
                                                                         "(gguf: left out)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where to look for the most recent run."),
) -> None:
    from steer_cli.vectors.extract import extract

    factor = run_command(one_scale, scale)
    keep = run_command(layer_spec, layers)
    if source is None:
        from steer_cli.runs import latest_run

        source = run_command(latest_run, runs_dir, kind="train")
        info(f"using the most recent training run: {source}")
    result = run_command(extract, source, output, fmt=fmt, overwrite=overwrite, drop_layer_0=drop_layer_0,
                         place=place, scale=factor, layers=keep)
    src = result.source
    for note in result.notes:
        info(f"note: {note}")
    layers = src.meta.get("layers")
    what = f"layers {layers}" if layers is not None and len(layers) < src.vectors.shape[0] else "all layers"
    info(f"[green]wrote[/green] {result.output} ({result.format}; [{src.vectors.shape[0]}, {src.vectors.shape[1]}], "
         f"{what}) from {src.kind} {src.source}")
