"""Models to benchmark without downloads: random weights in a real model's geometry.

``random-50m``, ``random-150m`` and ``random-1b`` are Qwen2 shapes of those sizes.
``<geometry>-<N>layers`` (e.g. ``qwen2.5-math-7b-2layers``) is a real model's width (hidden,
intermediate, heads, vocabulary, untied head) with only N decoder layers: what one layer and one
token cost at that width can be measured on a small machine and extrapolated to the real depth.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from steer_cli.errors import SteerError
from steer_cli.models import quiet_transformers, resolve_model

RANDOM_PREFIX = "random-"
# Qwen2-shaped random models: name -> config overrides.
RANDOM_MODELS: dict[str, dict[str, Any]] = {
    "random-50m": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                       intermediate_size=2048, vocab_size=32000),
    "random-150m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                        intermediate_size=3072, vocab_size=32000),
    # 0.86 B parameters: big enough for a GPU's kernels to matter, small enough for any card.
    "random-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=4,
                      intermediate_size=5632, vocab_size=32000),
}

# Real models' geometry (their config.json), for ``<name>-<N>layers``; ``layers`` is the real depth.
GEOMETRIES: dict[str, dict[str, Any]] = {
    "qwen2.5-math-7b": dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                            num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                            rope_theta=10000.0, max_position_embeddings=4096, rms_norm_eps=1e-6, layers=28),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         rope_theta=1000000.0, max_position_embeddings=32768, rms_norm_eps=1e-6, layers=28),
}
_GEOMETRY_RE = re.compile(r"^(?P<base>.+)-(?P<layers>\d+)layers?$")


def geometry_of(name: str) -> tuple[str, int] | None:
    """(geometry, layers) for ``<geometry>-<N>layers``, else None."""
    m = _GEOMETRY_RE.match(name)
    if m and m.group("base") in GEOMETRIES:
        return m.group("base"), int(m.group("layers"))
    return None


def is_synthetic(name: str) -> bool:
    return name.startswith(RANDOM_PREFIX) or geometry_of(name) is not None


def real_depth(name: str) -> int | None:
    """Layers of the real model whose geometry ``name`` borrows (None for other names)."""
    g = geometry_of(name)
    return int(GEOMETRIES[g[0]]["layers"]) if g else None


def synthetic_config(name: str, layers: int | None = None) -> Any:
    """The Qwen2 config of a random model or a geometry, optionally with another number of layers."""
    g = geometry_of(name)
    if g is not None:
        values = {k: v for k, v in GEOMETRIES[g[0]].items() if k != "layers"}
        values["num_hidden_layers"] = g[1]
    elif name in RANDOM_MODELS:
        values = dict(RANDOM_MODELS[name], max_position_embeddings=4096, tie_word_embeddings=False)
    else:
        known = ", ".join([*RANDOM_MODELS, *(f"{k}-<N>layers" for k in GEOMETRIES)])
        raise SteerError(f"unknown synthetic model {name!r}; choose one of {known}")
    if layers is not None:
        values["num_hidden_layers"] = layers
    return Qwen2Config(**values)


def materialize_model(name: str, workdir: Path, seed: int = 0, *, layers: int | None = None,
                      dtype: str = "float32") -> str:
    """A loadable model path: synthetic names are built with random weights into ``workdir``."""
    if not is_synthetic(name):
        return resolve_model(name)


    config = synthetic_config(name, layers)
    quiet_transformers()
    path = workdir / f"{name}-{config.num_hidden_layers}-{dtype}"
    if not (path / "config.json").exists():
        torch.manual_seed(seed)
        # Built in the dtype it will be loaded in: a 7B-wide model in float32 is 4 bytes a parameter.
        # Random initialisation of a billion parameters takes minutes on a CPU, a second on a GPU.
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        model.save_pretrained(path)
        del model
    return str(path)
