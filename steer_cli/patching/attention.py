"""Where the parts of one decoder layer's attention live: a data table, like ``archs.py``.

Head-level patching (``steer study patch``) hooks modules, never copies model code, so it needs
to know, for each family of the architecture table:

- the attention module of a decoder layer, and its output projection, whose *input* is z, the
  per-head attention outputs concatenated head-major ([..., heads * head_dim]; head h is columns
  ``h * head_dim : (h + 1) * head_dim``) in every family here;
- where q, k and v come from: three projections, or one fused projection in one of two layouts
  (``concat``: [q heads | k heads | v heads], Phi-3 and GPT-2; ``per_head``: per head [q k v],
  GPT-NeoX). Slices are taken on the projection's output, before RoPE and q/k norms;
- the module whose input is the residual stream after the attention sublayer (``mlp_path``): the
  pre-MLP norm in most families, the MLP itself in OLMo2 (no pre-norm). A parallel-residual block
  (GPT-NeoX, StableLM with ``use_parallel_residual``) has no such point: the MLP reads the layer
  input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from steer_cli.errors import SteerError
from steer_cli.patching.archs import locate, resolve

PARTS = ("q", "k", "v")


@dataclass(frozen=True)
class AttentionSpec:
    """Attribute names of one family's attention, relative to a decoder layer."""

    attention: str = "self_attn"
    out_proj: str = "o_proj"  # relative to the attention module
    qkv_layout: str = "separate"  # separate | concat | per_head
    q_proj: str = "q_proj"  # the fused projection's name for concat / per_head
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    mlp_path: str = "post_attention_layernorm"


_DEFAULT = AttentionSpec()
ATTENTION: dict[str, AttentionSpec] = {
    "gemma2": AttentionSpec(mlp_path="pre_feedforward_layernorm"),
    "gemma3": AttentionSpec(mlp_path="pre_feedforward_layernorm"),
    "olmo2": AttentionSpec(mlp_path="mlp"),
    "phi3": AttentionSpec(qkv_layout="concat", q_proj="qkv_proj", k_proj="qkv_proj", v_proj="qkv_proj"),
    "gpt_neox": AttentionSpec(attention="attention", out_proj="dense", qkv_layout="per_head",
                              q_proj="query_key_value", k_proj="query_key_value", v_proj="query_key_value"),
    "gpt2": AttentionSpec(attention="attn", out_proj="c_proj", qkv_layout="concat",
                          q_proj="c_attn", k_proj="c_attn", v_proj="c_attn", mlp_path="ln_2"),
}


def attention_spec(arch: str) -> AttentionSpec:
    return ATTENTION.get(arch, _DEFAULT)


@dataclass
class LayerParts:
    """The concrete attention parts of one decoder layer of a loaded model."""

    arch: str
    index: int
    layer: nn.Module
    attention: nn.Module
    out_proj: nn.Module
    proj: dict[str, nn.Module]  # "q" / "k" / "v" -> the module whose output holds that part
    mlp_path: nn.Module
    heads: int
    kv_heads: int
    head_dim: int
    layout: str
    parallel: bool  # a parallel-residual block: no MLP-path input after attention

    def count(self, part: str) -> int:
        """Heads of a part: query heads for q and z, key-value heads for k and v."""
        return self.kv_heads if part in ("k", "v") else self.heads

    def columns(self, part: str, head: int) -> slice:
        """Columns of ``head``'s slice of ``part`` ("q", "k", "v" or "z") in its module's output
        (for z: in the output projection's input)."""
        d = self.head_dim
        if part == "z" or self.layout == "separate":
            start = head * d
        elif self.layout == "concat":
            start = {"q": 0, "k": self.heads * d, "v": (self.heads + self.kv_heads) * d}[part] + head * d
        else:  # per_head: [q k v] for each head in turn
            start = head * 3 * d + PARTS.index(part) * d
        return slice(start, start + d)

    def group(self, kv_head: int) -> list[int]:
        """The query heads that read key-value head ``kv_head`` (GQA)."""
        per = self.heads // self.kv_heads
        return list(range(kv_head * per, (kv_head + 1) * per))


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def locate_attention(model: nn.Module, index: int) -> LayerParts:
    """The attention parts of decoder layer ``index``; a one-line error for a missing layer."""
    located = locate(model)
    n = located.num_layers
    if not 0 <= index < n:
        raise SteerError(f"layer {index} does not exist: this model has layers 0..{n - 1}")
    spec = attention_spec(located.spec.name)
    layer = located.layers[index]
    name = located.spec.name
    attention = resolve(layer, (spec.attention,), "attention module", name)
    out_proj = resolve(attention, (spec.out_proj,), "attention output projection", name)
    proj = {p: resolve(attention, (getattr(spec, f"{p}_proj"),), f"{p} projection", name) for p in PARTS}
    mlp_path = resolve(layer, (spec.mlp_path,), "MLP-path input", name)
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    config = base.config
    heads = _config_int(config, "num_attention_heads", "n_head")
    if heads is None:
        raise SteerError(f"cannot tell the number of attention heads of this {name} model from its config")
    kv_heads = _config_int(config, "num_key_value_heads") or heads
    head_dim = (_config_int(attention, "head_dim", "head_size") or _config_int(config, "head_dim")
                or int(getattr(config, "hidden_size", getattr(config, "n_embd", 0))) // heads)
    parallel = bool(getattr(config, "use_parallel_residual", False))
    return LayerParts(name, index, layer, attention, out_proj, proj, mlp_path, heads, kv_heads, head_dim,
                      spec.qkv_layout, parallel)
