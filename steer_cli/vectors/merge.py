"""steer merge: stack single-layer runs into one matrix, average seeds, or fold vectors into weights.

Stacking takes row l from the input whose metadata ``layers`` claims layer l (an input without
that metadata, e.g. an .npy matrix, claims every row). A layer claimed twice is an error (with
``mean``, claimants are averaged instead: runs that differ only in seed); a layer nobody claims is
an error unless ``fill_zeros``. Inputs must agree on shape, base model and place.

Folding (``fold_to_dir``) writes a stock transformers checkpoint whose logits equal the base model
plus the vectors; see ``steer_cli.patching.fold`` for which architectures allow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoConfig

from steer_cli.errors import SteerError
from steer_cli.io import atomic_dir
from steer_cli.lock import hold_output
from steer_cli.models import known_model, load_causal_lm, load_tokenizer, quiet_transformers, resolve_model
from steer_cli.patching.archs import locate
from steer_cli.patching.fold import fold_gap, fold_plan, fold_vectors
from steer_cli.vectors.extract import Extracted, apply_strength, output_format, read_source, write_output
from steer_cli.vectors.file import check_fits, unembed_sha256

# Metadata a merged file keeps when every input has the same value.
_SHARED_KEYS = ("dataset", "preset", "step", "seed", "unembed_sha256")


def _claimed(item: Extracted) -> list[int]:
    num_layers = item.vectors.shape[0]
    layers = item.meta.get("layers")
    if layers is None:
        return list(range(num_layers))
    try:
        claimed = sorted({int(i) for i in layers})
    except (TypeError, ValueError):
        raise SteerError(f"{item.source}: metadata 'layers' is not a list of layer indices ({layers!r})") from None
    bad = [i for i in claimed if not 0 <= i < num_layers]
    if bad:
        raise SteerError(f"{item.source}: metadata claims layers {bad} but the matrix has {num_layers} rows")
    return claimed


def _same_model(a: Extracted, b: Extracted) -> bool:
    ha, hb = a.meta.get("unembed_sha256"), b.meta.get("unembed_sha256")
    if ha and hb:
        return ha == hb
    ma, mb = a.meta.get("base_model"), b.meta.get("base_model")
    if not ma or not mb:
        return True

    ka, kb = known_model(str(ma)), known_model(str(mb))
    if ka is not None and kb is not None:
        return ka == kb
    return str(ma).rstrip("/") == str(mb).rstrip("/")


def merge_vectors(items: Sequence[Extracted], *, mean: bool = False, fill_zeros: bool = False
                  ) -> tuple[Any, dict[str, Any]]:
    """Merge read sources into one ([num_layers, hidden] float32 tensor, metadata)."""
    if not items:
        raise SteerError("no vectors to merge; pass the vectors files (or runs) to merge")
    first = items[0]
    shape = tuple(first.vectors.shape)
    place = first.meta.get("place", "layer_output")
    for item in items[1:]:
        if tuple(item.vectors.shape) != shape:
            raise SteerError(f"{item.source} has shape {list(item.vectors.shape)} but {first.source} has "
                             f"{list(shape)}; merged files must come from the same model")
        if not _same_model(first, item):
            raise SteerError(f"{item.source} was trained on {item.meta.get('base_model')} but {first.source} on "
                             f"{first.meta.get('base_model')}; merge vectors of one base model")
        other = item.meta.get("place", "layer_output")
        if other != place:
            raise SteerError(f"{item.source} is applied at {other} but {first.source} at {place}; "
                             "merged vectors must share their place")

    claims: dict[int, list[Extracted]] = {}
    for item in items:
        for layer in _claimed(item):
            claims.setdefault(layer, []).append(item)
    if not mean:
        for layer, owners in sorted(claims.items()):
            if len(owners) > 1:
                raise SteerError(f"layer {layer} is claimed by both {owners[0].source} and {owners[1].source}; "
                                 "stacking takes each layer from one file (use --mean to average seeds)")
    missing = [i for i in range(shape[0]) if i not in claims]
    if missing and not fill_zeros:
        raise SteerError(f"no input holds layer(s) {_ranges(missing)}; add their files, or pass --fill-zeros "
                         "to leave them unsteered")

    merged = torch.zeros(shape, dtype=torch.float32)
    for layer, owners in claims.items():
        merged[layer] = torch.stack([o.vectors[layer].to(torch.float32) for o in owners]).mean(0)

    meta: dict[str, Any] = {
        "base_model": next((i.meta["base_model"] for i in items if i.meta.get("base_model")), None),
        "layers": sorted(claims),
        "place": place,
        "setup": "steering",
        "merge": "mean" if mean else "stack",
        "merged_from": [str(i.source) for i in items],
    }
    for key in _SHARED_KEYS:
        values = [i.meta.get(key) for i in items]
        if values[0] is not None and all(v == values[0] for v in values):
            meta[key] = values[0]
    if mean and "seed" not in meta:
        seeds = [i.meta.get("seed") for i in items]
        if all(s is not None for s in seeds):
            meta["seeds"] = seeds
    return merged, meta


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 3, 7] -> "0-3, 7"."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


@dataclass
class MergeResult:
    output: Path
    layers: list[int]
    inputs: int
    notes: list[str]


def merge_files(paths: Sequence[str | Path], output: str | Path, *, mean: bool = False, fill_zeros: bool = False,
                overwrite: bool = False, fmt: str | None = None) -> MergeResult:
    """Merge vectors files (or runs/checkpoints) into one file at ``output``."""
    output = Path(output).expanduser()
    fmt = output_format(output, fmt)
    with hold_output(output, "steer merge"):
        if output.exists() and not overwrite:
            raise SteerError(f"{output} exists; pass --overwrite to replace it")
        items = [read_source(p) for p in paths]
        merged, meta = merge_vectors(items, mean=mean, fill_zeros=fill_zeros)
        notes = write_output(merged, meta, output, fmt, overwrite=overwrite)
    if fill_zeros:
        missing = [i for i in range(merged.shape[0]) if i not in meta["layers"]]
        if missing:
            notes.insert(0, f"layers {_ranges(missing)} left unsteered (--fill-zeros)")
    return MergeResult(output, meta["layers"], len(items), notes)


# -- folding -------------------------------------------------------------------------------------

@dataclass
class FoldResult:
    output: Path
    model: str
    target_class: str
    max_logit_gap: float
    notes: list[str]


def _check_fold_dir(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise SteerError(f"output {output} is a file; --fold writes a checkpoint directory")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise SteerError(f"{output} exists and is not empty; pass --overwrite to replace it")
        if not (output / "config.json").exists():
            raise SteerError(f"{output} is not a model checkpoint directory (no config.json); refusing to "
                             "replace it even with --overwrite; pick another -o")


def fold_to_dir(vectors: str | Path, output: str | Path, *, model: str | None = None, overwrite: bool = False,
                check_tokens: int = 16, scale: float = 1.0, layers: list[int] | None = None) -> FoldResult:
    """Write ``model`` with ``vectors`` folded into its weights to ``output`` (save_pretrained + tokenizer);
    ``scale`` and ``layers`` fold ``scale`` x the vectors of those layers only (``--scale``, ``--layers``)."""
    # The lock is a sibling .<name>.lock: the output directory is replaced as a whole.
    with hold_output(Path(output).expanduser(), "steer merge --fold"):
        return _fold_to_dir(vectors, output, model=model, overwrite=overwrite, check_tokens=check_tokens,
                            scale=scale, layers=layers)


def _fold_to_dir(vectors: str | Path, output: str | Path, *, model: str | None, overwrite: bool,
                 check_tokens: int, scale: float, layers: list[int] | None) -> FoldResult:

    output = Path(output).expanduser()
    _check_fold_dir(output, overwrite)
    item = read_source(vectors)
    notes: list[str] = apply_strength(item, scale, layers)
    if model is None:
        model = item.meta.get("base_model")
        if not model:
            raise SteerError(f"{item.source} does not record its base model; pass --model")
        notes.append(f"base model from the vectors file: {model}")
    place = item.meta.get("place", "layer_output")
    layers = item.meta.get("layers")

    quiet_transformers()
    path = resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise SteerError(f"cannot load model config from {path}: {str(err).strip().splitlines()[0]}") from None
    plan = fold_plan(config, place)  # refuse before loading any weights
    num_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    check_fits(item.vectors, num_layers, hidden, source=item.source)

    dtype = getattr(config, "dtype", None) or torch.float32
    dtype_name = str(dtype).replace("torch.", "") if not isinstance(dtype, str) else dtype
    base = load_causal_lm(model, dtype=dtype_name)
    recorded = item.meta.get("unembed_sha256")
    if recorded:
        if unembed_sha256(locate(base).unembed.weight) != recorded:
            notes.append(f"warning: {model}'s unembedding differs from the one the vectors were trained with")
    folded = fold_vectors(base, item.vectors, place, layers=layers)

    vocab = int(getattr(config, "vocab_size", 0) or 0) or 100
    ids = torch.arange(check_tokens).remainder(vocab).unsqueeze(0)
    gap, scale = fold_gap(base, folded, item.vectors, place, layers, ids)
    tolerance = 1e-4 if next(base.parameters()).dtype == torch.float32 else 5e-2
    if gap > tolerance * max(scale, 1.0):
        raise SteerError(f"folded model's logits differ from the steered model's by {gap:.3g} "
                         f"(max |logit| {scale:.3g}); folding {config.model_type} is not exact here; "
                         "use the vectors file instead")

    with atomic_dir(output) as tmp:
        folded.save_pretrained(str(tmp))
        try:
            load_tokenizer(model).save_pretrained(str(tmp))
        except SteerError as err:
            notes.append(f"no tokenizer copied ({err})")
    if plan.target_class != type(base).__name__:
        notes.append(f"{config.model_type} written as {plan.target_class} (an exact stock equivalent with MLP biases)")
    return FoldResult(output, model, plan.target_class, gap, notes)
