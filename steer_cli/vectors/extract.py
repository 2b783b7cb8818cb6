"""steer extract: steering vectors out of runs, checkpoints and matrices, into one vectors file.

Sources (``read_source``):

- a steer training run directory (its ``final/``, else its latest ``checkpoint-N/``),
- a steer checkpoint directory or vectors file (``vectors.safetensors``; re-exported),
- an ``.npy`` [num_layers, hidden] matrix (the reference implementation's export),
- a transformers checkpoint (``*.safetensors`` shards + ``config.json``, read with safetensors only,
  never unpickled, never loaded as a model) holding the vectors the way the reference implementation
  saves them: ``*.layers.{i}.mlp.down_proj.bias`` (a bias the stock architecture lacks), or its
  rank-r form ``steering_matrix_A`` [L, r] and ``steering_matrix_B`` [r, d] (vectors = A @ B).

Formats written (``write_output``): the vectors file (safetensors), ``npy`` (the matrix alone), and
``gguf``: a llama.cpp control vector (``vectors.gguf``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from steer_cli.errors import SteerError
from steer_cli.io import atomic_path
from steer_cli.lock import hold_output
from steer_cli.models import quiet_transformers
from steer_cli.patching.archs import arch_for_config, locate
from steer_cli.patching.steering import PLACES
from steer_cli.patching.strength import describe, kept_layers, scaled_vectors
from steer_cli.train.checkpoint import run_vectors_file
from steer_cli.vectors.file import load_npy, load_vectors, save_vectors, unembed_sha256
from steer_cli.vectors.gguf import write_gguf

FORMATS = ("safetensors", "npy", "gguf")
_RANK_A, _RANK_B = "steering_matrix_A", "steering_matrix_B"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


@dataclass
class Extracted:
    """Vectors read from a source, with their metadata and what the user should be told."""

    vectors: Any  # float32 tensor [num_layers, hidden]
    meta: dict[str, Any]
    source: Path
    kind: str
    notes: list[str] = field(default_factory=list)


# -- reading ------------------------------------------------------------------------------------

def read_source(path: str | Path) -> Extracted:
    """Vectors from any supported source; a one-line SteerError for anything else."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SteerError(f"{path} does not exist; pass a training run, checkpoint, vectors file or .npy matrix")
    if path.is_dir():
        return _read_dir(path)
    head = _head(path)
    if path.suffix == ".npy" or head.startswith(b"\x93NUMPY"):
        # .npy matrices are the reference implementation's export: its vectors are down_proj biases.
        tensor = load_npy(path)
        notes = ["an .npy records no place; taken as down_proj_bias, the reference implementation's "
                 "(pass --place to say otherwise)"]
        layers = nonzero_layers(tensor, notes)
        return Extracted(tensor, {"place": "down_proj_bias", "layers": layers}, path, ".npy matrix", notes)
    # Parse as safetensors before sniffing for pickles: a safetensors header length can start with
    # the byte 0x80, which is also the pickle magic.
    names = _safetensors_keys(path)
    if names is None:
        if any(head.startswith(m) for m in _PICKLE_MAGIC):
            raise SteerError(f"{path} is a pickle/torch.save file; steer reads only safetensors and .npy "
                             "(pickles can run code); re-save the tensors with safetensors")
        raise SteerError(f"{path} is neither a safetensors file nor an .npy matrix; pass a vectors file, "
                         "a checkpoint directory or a training run")
    if "vectors" in names:
        tensor, meta = load_vectors(path)
        return Extracted(tensor, meta, path, "vectors file")
    return _read_checkpoint([path], path.parent / "config.json", path)


def _read_dir(path: Path) -> Extracted:
    vectors_file = run_vectors_file(path)
    if vectors_file is not None:
        tensor, meta = load_vectors(vectors_file)
        kind = "steer checkpoint" if vectors_file.parent == path else "steer run"
        return Extracted(tensor, meta, vectors_file, kind)
    shards = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if shards:
        return _read_checkpoint(shards, path / "config.json", path)
    raise SteerError(
        f"{path} holds nothing steer can extract from: looked for a training run (final/ or checkpoint-N/ "
        "with vectors.safetensors), vectors.safetensors, and *.safetensors checkpoint shards"
    )


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(8)
    except OSError as err:
        raise SteerError(f"cannot read {path}: {err.strerror}") from None


def _safetensors_keys(path: Path) -> list[str] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception:  # safetensors raises its own error types for anything malformed
        return None


def _read_checkpoint(shards: list[Path], config_path: Path, source: Path) -> Extracted:
    """Vectors from transformers checkpoint shards (reference layout or its rank-r form)."""
    config = _read_json(config_path)
    notes: list[str] = []
    spec, stock_bias = _arch_facts(config_path.parent) if config else (None, False)
    pattern = _bias_pattern(spec)
    biases: dict[int, Any] = {}
    rank: dict[str, Any] = {}
    where: dict[int, str] = {}
    unreadable = []
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    m = pattern.search(key)
                    if m:
                        layer = int(next(g for g in m.groups() if g is not None))
                        biases[layer] = f.get_tensor(key).to(torch.float32)
                        where[layer] = key
                    elif key.endswith((_RANK_A, _RANK_B)):
                        rank[_RANK_A if key.endswith(_RANK_A) else _RANK_B] = f.get_tensor(key).to(torch.float32)
        except SteerError:
            raise
        except Exception:
            unreadable.append(shard.name)
    if unreadable and not biases and not rank:
        raise SteerError(f"{source}: {', '.join(unreadable[:3])} are not valid safetensors files")

    num_layers = _cfg(config, "num_hidden_layers", "n_layer")
    hidden = _cfg(config, "hidden_size", "n_embd")
    if rank:
        if len(rank) != 2:
            missing = _RANK_B if _RANK_A in rank else _RANK_A
            raise SteerError(f"{source} has {next(iter(rank))} but no {missing}; both are needed (vectors = A @ B)")
        a, b = rank[_RANK_A], rank[_RANK_B]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise SteerError(f"{source}: {_RANK_A} {list(a.shape)} and {_RANK_B} {list(b.shape)} do not multiply "
                             "([L, r] @ [r, d])")
        vectors = a @ b
        notes.append(f"rank-{a.shape[1]} steering matrices: vectors = {_RANK_A} @ {_RANK_B}")
        kind = "rank-r steering checkpoint"
    elif biases:
        if stock_bias:
            raise SteerError(
                f"{source}: {where[min(where)]} is part of the stock {spec.name} model with this config "
                "(a model weight, not a steering vector); steer extracts only biases the stock architecture lacks"
            )
        sizes = {tuple(t.shape) for t in biases.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise SteerError(f"{source}: the down_proj biases have shapes {sorted(sizes)}; expected one [hidden] each")
        total = num_layers or max(biases) + 1
        if max(biases) >= total:
            raise SteerError(f"{source} has a bias for layer {max(biases)} but its config has {total} layers")
        d = next(iter(sizes))[0]
        vectors = torch.zeros(total, d, dtype=torch.float32)
        for i, t in biases.items():
            vectors[i] = t
        kind = "reference checkpoint (down_proj biases)"
    else:
        looked = " or ".join(f"*.{name}" for name in _bias_names(spec))
        raise SteerError(
            f"{source} has no steering vectors: looked for {looked} (biases the stock model lacks) and "
            f"{_RANK_A}/{_RANK_B} in {len(shards)} safetensors file(s)"
        )
    if not torch.isfinite(vectors).all():
        raise SteerError(f"{source}: the steering vectors contain NaN or infinite values")
    if num_layers is not None and vectors.shape[0] != num_layers:
        raise SteerError(f"{source}: vectors have {vectors.shape[0]} rows but the config has {num_layers} layers")
    if hidden is not None and vectors.shape[1] != hidden:
        raise SteerError(f"{source}: vectors have width {vectors.shape[1]} but the config's hidden size is {hidden}")

    layers = nonzero_layers(vectors, notes)
    base = (config or {}).get("_name_or_path") or str(source if source.is_dir() else source.parent)
    meta: dict[str, Any] = {"base_model": base, "layers": layers, "place": "down_proj_bias", "setup": "steering"}
    unembed = _unembed_hash(shards, config or {})
    if unembed:
        meta["unembed_sha256"] = unembed
    arch = spec.name if spec else (config or {}).get("model_type", "this architecture")
    if spec is None or spec.mlp_output_is_residual:
        notes.append(f"place down_proj_bias (the reference layout); for {arch} this equals layer_output")
    else:
        notes.append(f"place down_proj_bias (the reference layout); {arch} has a norm after the MLP, so this is "
                     "not the same as layer_output; steer applies the vectors as down_proj biases")
    if not config:
        notes.append(f"no config.json beside {source}; the layer count and base model come from the tensors alone")
    return Extracted(vectors, meta, source, kind, notes)


def nonzero_layers(vectors: Any, notes: list[str]) -> list[int]:
    """The steered layers of a matrix that does not record them: its non-zero rows (all, if none is).

    The reference implementation's single-layer runs keep exact zeros in the other rows, so this is
    what lets ``steer merge`` stack them; leaving a zero row out changes nothing when applied.
    """
    rows = [i for i in range(vectors.shape[0]) if bool(vectors[i].abs().max() > 0)]
    if not rows or len(rows) == vectors.shape[0]:
        return list(range(vectors.shape[0]))
    notes.append(f"steered layers taken from the non-zero rows: {rows}")
    return rows


def _bias_names(spec: Any) -> list[str]:
    """Readable names of the per-layer down-projection bias keys, e.g. ``layers.{i}.mlp.down_proj.bias``."""
    layers = ["layers"] if spec is None else sorted({p.rsplit(".", 1)[-1] for p in spec.layers})
    downs = ["mlp.down_proj"] if spec is None else list(spec.down_proj)
    return [f"{layer}.{{i}}.{down}.bias" for layer in layers for down in downs]


def _bias_pattern(spec: Any) -> re.Pattern[str]:
    """Regex for those keys under any prefix; the one group that matched is the layer index."""
    alternatives = "|".join(re.escape(name).replace(re.escape("{i}"), r"(\d+)") for name in _bias_names(spec))
    return re.compile(rf"(?:^|\.)(?:{alternatives})$")


def _arch_facts(model_dir: Path) -> tuple[Any, bool]:
    """(architecture spec or None, whether the stock model already has a down-projection bias).

    Decided by building the stock model from the config on the meta device (no memory, no weights).
    """
    try:
        quiet_transformers()
        config = AutoConfig.from_pretrained(str(model_dir))
        spec = arch_for_config(config)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
        return spec, getattr(locate(model).down_proj(0), "bias", None) is not None
    except Exception:  # unknown or custom architectures: fall back to the reference layout's key names
        return None, False


def _unembed_hash(shards: list[Path], config: dict[str, Any]) -> str | None:

    wanted = ["lm_head.weight"]
    if config.get("tie_word_embeddings", True):
        wanted.append("embed_tokens.weight")
    for suffix in wanted:
        for shard in shards:
            try:
                with safe_open(str(shard), framework="pt") as f:
                    for key in f.keys():
                        if key == suffix or key.endswith("." + suffix):
                            return unembed_sha256(f.get_tensor(key))
            except Exception:
                continue
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SteerError(f"{path} is not valid JSON ({err})") from None
    return data if isinstance(data, dict) else None


def _cfg(config: dict[str, Any] | None, *keys: str) -> int | None:
    for key in keys:
        value = (config or {}).get(key)
        if isinstance(value, int):
            return value
        text = (config or {}).get("text_config")
        if isinstance(text, dict) and isinstance(text.get(key), int):
            return text[key]
    return None


# -- writing ------------------------------------------------------------------------------------

def output_format(output: Path, fmt: str | None) -> str:
    """--format, else from the output file's suffix (.npy, .gguf), else safetensors."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise SteerError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = output.suffix.lower().lstrip(".")
    return suffix if suffix in ("npy", "gguf") else "safetensors"


def vectors_meta(extracted: Extracted) -> dict[str, Any]:
    """Metadata for the written vectors file: the source's, plus where it came from."""
    meta = {k: v for k, v in extracted.meta.items()
            if k not in ("format", "format_version", "num_layers", "hidden_size")}
    meta.setdefault("setup", "steering")
    meta.setdefault("place", "layer_output")
    meta["source"] = str(extracted.source)
    return meta


def write_output(vectors: Any, meta: dict[str, Any], output: Path, fmt: str, *,
                 overwrite: bool = False, drop_layer_0: bool = False) -> list[str]:
    """Write ``vectors`` in ``fmt`` to ``output`` atomically; returns notes for the user."""

    if output.is_dir():
        raise SteerError(f"output {output} is a directory; pass a file name")
    if output.exists() and not overwrite:
        raise SteerError(f"{output} exists; pass --overwrite to replace it")
    if fmt == "safetensors":
        save_vectors(output, vectors, **meta)
        return []
    if fmt == "npy":
        with atomic_path(output) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, vectors.detach().cpu().float().numpy(), allow_pickle=False)
        return ["an .npy file holds the matrix only: base model, layers and place are not kept"]
    return write_gguf(output, vectors, meta, drop_layer_0=drop_layer_0)


# -- the command --------------------------------------------------------------------------------

@dataclass
class ExtractResult:
    output: Path
    format: str
    source: Extracted
    notes: list[str]


def apply_strength(extracted: Extracted, scale: float = 1.0, layers: list[int] | None = None) -> list[str]:
    """Scale the vectors and keep only ``layers`` of the steered ones (``--scale``/``--layers``), in
    place, recording both in the metadata; returns notes. Scale 1 on all layers changes nothing."""
    if scale == 1.0 and layers is None:
        return []
    num_layers = extracted.vectors.shape[0]
    kept = kept_layers(extracted.meta.get("layers"), layers, num_layers)
    extracted.vectors = scaled_vectors(extracted.vectors, scale, kept)
    if layers is not None:
        extracted.meta["layers"] = list(kept)
    if scale != 1.0:
        extracted.meta["scale"] = scale * float(extracted.meta.get("scale", 1.0))
    return [f"vectors written at {describe(scale, kept if layers is not None else None)}"]


def extract(source: str | Path, output: str | Path, *, fmt: str | None = None, overwrite: bool = False,
            drop_layer_0: bool = False, place: str | None = None, scale: float = 1.0,
            layers: list[int] | None = None) -> ExtractResult:
    """Read vectors from ``source`` and write them to ``output`` (``fmt``: safetensors, npy or gguf).

    ``place`` sets where the vectors go for a source that does not record it (an .npy matrix).
    ``scale`` multiplies the vectors and ``layers`` keeps only those layers (``--scale``, ``--layers``).
    """
    output = Path(output).expanduser()
    fmt = output_format(output, fmt)
    if place is not None and place not in PLACES:
        raise SteerError(f"--place must be one of {', '.join(PLACES)}, got {place!r}")
    with hold_output(output, "steer extract"):
        if output.exists() and not overwrite:  # before reading a possibly large checkpoint
            raise SteerError(f"{output} exists; pass --overwrite to replace it")
        extracted = read_source(source)
        notes = list(extracted.notes)
        if place is not None:
            if extracted.kind != ".npy matrix" and extracted.meta.get("place", place) != place:
                raise SteerError(f"{extracted.source} records place {extracted.meta['place']}; --place {place} "
                                 "would change what the vectors do")
            extracted.meta["place"] = place
            notes = [n for n in notes if "records no place" not in n]
        notes += apply_strength(extracted, scale, layers)
        meta = vectors_meta(extracted)
        notes += write_output(extracted.vectors, meta, output, fmt, overwrite=overwrite, drop_layer_0=drop_layer_0)
    return ExtractResult(output, fmt, extracted, notes)
