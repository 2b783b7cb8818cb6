"""steer merge: stack single-layer vectors files, average seeds, or fold vectors into a stock checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from steer_cli.cli import app
from steer_cli.cli.common import LAYERS_HELP, SCALE_HELP, fail, info, layer_spec, one_scale, run_command

MERGE_HELP = (
    "Merge vectors files into one, or fold vectors into a model checkpoint.\n\n"
    "Stacking (default): reads vectors files (or runs/checkpoints) that each trained some layers, takes row l "
    "from the file whose metadata claims layer l, and writes one vectors file -o FILE. A layer claimed twice is "
    "an error; a layer nobody claims is an error unless --fill-zeros. --mean averages the files that claim the "
    "same layers (runs that differ only in seed). Inputs must share shape, base model and place.\n\n"
    "Folding (--fold --model M --vectors FILE -o DIR): writes DIR, a transformers checkpoint (safetensors, "
    "config, tokenizer) that stock transformers and vLLM load with no custom code, whose logits equal M steered "
    "by FILE (checked on a short input before writing). Exact for Llama and Granite (mlp_bias), Qwen2 and "
    "Mistral without sliding windows (written as LlamaForCausalLM with biases), GPT-2, GPT-NeoX and Starcoder2; "
    "other architectures are refused with the reason."
)


@app.command("merge", help=MERGE_HELP)
def merge_command(
    files: Optional[list[Path]] = typer.Argument(None, metavar="FILE...", show_default=False,
                                                 help="Vectors files (or runs/checkpoints) to merge."),
    output: Path = typer.Option(..., "--output", "-o", show_default=False,
                                help="Vectors file to write, or with --fold the checkpoint directory."),
    mean: bool = typer.Option(False, "--mean", help="Average files that claim the same layers (seeds)."),
    fill_zeros: bool = typer.Option(False, "--fill-zeros", help="Leave layers no file claims at zero (unsteered)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f",
                                      help="safetensors | npy | gguf (default: from the -o suffix, else safetensors)."),
    fold: bool = typer.Option(False, "--fold", help="Fold --vectors into --model's weights and write a checkpoint."),
    model: Optional[str] = typer.Option(None, "--model", help="With --fold: base model (default: the one "
                                                              "recorded in the vectors file)."),
    vectors: Optional[Path] = typer.Option(None, "--vectors", help="With --fold: the vectors file to fold in."),
    scale: Optional[str] = typer.Option(None, "--scale", help="With --fold: " + SCALE_HELP),
    layers: Optional[str] = typer.Option(None, "--layers", help="With --fold: " + LAYERS_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output (atomically)."),
) -> None:
    files = list(files or [])
    factor = run_command(one_scale, scale)
    keep = run_command(layer_spec, layers)
    if fold:
        if vectors is None and len(files) == 1:
            vectors, files = files[0], []
        if files:
            fail("--fold takes one vectors file (--vectors FILE), not a list to merge")
        if vectors is None:
            fail("--fold needs --vectors FILE")
        if mean or fill_zeros or fmt:
            fail("--mean, --fill-zeros and --format apply to stacking, not to --fold")
        from steer_cli.vectors.merge import fold_to_dir

        result = run_command(fold_to_dir, vectors, output, model=model, overwrite=overwrite, scale=factor,
                             layers=keep)
        for note in result.notes:
            info(f"note: {note}")
        info(f"checked: max |logit difference| vs. the steered model = {result.max_logit_gap:.2e}")
        info(f"[green]wrote[/green] {result.output} ({result.target_class}, {result.model} + {vectors})")
        return
    if vectors is not None or model is not None:
        fail("--vectors and --model go with --fold; to merge, list the files: steer merge A B -o OUT")
    if scale is not None or layers is not None:
        fail("--scale and --layers go with --fold; to scale a vectors file use steer extract FILE --scale A -o OUT")
    if not files:
        fail("give the vectors files to merge: steer merge A.safetensors B.safetensors -o merged.safetensors")
    from steer_cli.vectors.merge import merge_files

    result = run_command(merge_files, files, output, mean=mean, fill_zeros=fill_zeros, overwrite=overwrite, fmt=fmt)
    for note in result.notes:
        info(f"note: {note}")
    how = "averaged" if mean else "stacked"
    info(f"[green]wrote[/green] {result.output}: {how} {result.inputs} file(s), layers {result.layers}")
