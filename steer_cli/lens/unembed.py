"""The unembedding W_U of a model, read alone from its checkpoint when it can be (one tensor via
``safe_open``), the whole model loaded only as a fallback; and the hash that ties vectors to it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from huggingface_hub import hf_hub_download
from safetensors import safe_open
from transformers import AutoConfig

from steer_cli.errors import SteerError
from steer_cli.models import load_causal_lm, quiet_transformers, resolve_model
from steer_cli.patching.archs import locate
from steer_cli.vectors.file import unembed_sha256


@dataclass
class Unembedding:
    weight: torch.Tensor  # [V, d], as stored
    num_layers: int
    source: str  # where it was read from


_UNTIED_KEYS = ("lm_head.weight", "embed_out.weight", "model.lm_head.weight")
_TIED_KEYS = ("model.embed_tokens.weight", "transformer.wte.weight", "wte.weight",
              "gpt_neox.embed_in.weight", "model.embed_in.weight", "embed_tokens.weight")


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _local_file(model_path: str, filename: str) -> Optional[Path]:
    """A file of a local checkpoint dir, or of a hub repo (downloaded/cached); None if absent."""
    local = Path(model_path)
    if local.is_dir():
        f = local / filename
        return f if f.exists() else None
    try:
        return Path(hf_hub_download(model_path, filename))
    except Exception:  # not on the hub, offline, gated: the caller falls back to a full load
        return None


def _read_unembed_tensor(model_path: str, tied: bool) -> Optional[tuple[torch.Tensor, str]]:
    """The unembedding tensor straight from the checkpoint's safetensors, or None."""
    keys = _TIED_KEYS + _UNTIED_KEYS if tied else _UNTIED_KEYS
    index = _local_file(model_path, "model.safetensors.index.json")
    if index is not None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError):
            return None
        key = next((k for k in keys if k in weight_map), None)
        shard = _local_file(model_path, weight_map[key]) if key else None
        candidates = [(key, shard)] if shard is not None else []
    else:
        single = _local_file(model_path, "model.safetensors")
        candidates = [(k, single) for k in keys] if single is not None else []
    for key, f in candidates:
        try:
            with safe_open(str(f), framework="pt") as handle:
                if key in handle.keys():
                    return handle.get_tensor(key), f"{key} of {f}"
        except Exception:  # a broken file: the full load reports it properly
            return None
    return None


def load_unembedding(model: str) -> Unembedding:
    """W_U of ``model`` (name, hub id, local dir or "demo"): from the checkpoint's safetensors
    when possible (the tied input embedding when ``tie_word_embeddings``), else a full load."""

    quiet_transformers()
    path = resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SteerError(f"cannot load model config from {path}: {first}") from None
    text = _text_config(config)
    num_layers = getattr(text, "num_hidden_layers", None)
    tied = bool(getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))
    found = _read_unembed_tensor(path, tied) if num_layers else None
    if found is not None:
        return Unembedding(found[0], int(num_layers), found[1])

    lm = load_causal_lm(model, dtype="float32")
    located = locate(lm)
    return Unembedding(located.unembed.weight.detach(), located.num_layers, f"{type(lm).__name__} of {path}")


def unembed_matches(weight: torch.Tensor, expected: str) -> bool:
    """Whether the hash recorded in the vectors file is this matrix's (as stored, or rounded to
    the bf16/fp16 a run may have held it in)."""
    if unembed_sha256(weight) == expected:
        return True
    for dtype in (torch.bfloat16, torch.float16):
        if weight.dtype != dtype and unembed_sha256(weight.to(dtype)) == expected:
            return True
    return False
