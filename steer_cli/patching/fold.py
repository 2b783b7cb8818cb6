"""Fold steering vectors into a model's weights: a stock checkpoint whose logits equal base + vectors.

A vector added at the end of decoder layer l equals a bias on that layer's MLP down projection
wherever the MLP output goes straight into the residual stream (``ArchSpec.mlp_output_is_residual``);
for place ``down_proj_bias`` it is that bias by definition. Folding is exact only where stock
transformers (and stock vLLM) can hold such a bias without custom code:

- Llama, Granite: the config switch ``mlp_bias=True`` (gate/up biases zero, down bias = vector;
  Granite scales its MLP output by ``residual_multiplier``, so a layer-output vector is divided by it).
- Qwen2 (no switch): rewritten as ``LlamaForCausalLM`` with ``attention_bias=True`` (q/k/v biases
  copied, o_proj bias zero) and ``mlp_bias=True``; every other part (RMSNorm, RoPE, GQA, SiLU MLP,
  tied embeddings) is the same computation. Refused when a layer uses sliding-window attention.
- Mistral: rewritten as ``LlamaForCausalLM`` with ``mlp_bias=True``; refused with a sliding window.
- GPT-2, GPT-NeoX, Starcoder2: the down projection already has a bias; the vector is added to it
  (Starcoder2 with ``use_bias=False`` gets ``use_bias=True`` and zero biases elsewhere).

Everything else raises a SteerError that says why. The returned model shares its weight tensors
with the input model (no copy); only the biases are new tensors, so the input model is unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import transformers
from accelerate import init_empty_weights
from torch import nn
from transformers import LlamaConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from steer_cli.errors import SteerError
from steer_cli.patching.archs import arch_for_config, locate
from steer_cli.patching.steering import PLACES, attach_steering, check_shape

# Why each family without an exact stock equivalent cannot be folded.
_UNSUPPORTED: dict[str, str] = {
    "qwen3": "its MLP has no bias switch and its q/k norms have no Llama equivalent",
    "gemma": "its MLP has no bias switch and its scaled embeddings and (1 + weight) norms have no Llama equivalent",
    "gemma2": "its MLP has no bias switch in stock transformers",
    "gemma3": "its MLP has no bias switch in stock transformers",
    "olmo": "its MLP has no bias switch and its parameter-free LayerNorm has no Llama equivalent",
    "olmo2": "its MLP has no bias switch in stock transformers",
    "phi3": "its MLP (fused gate_up_proj) has no bias switch and it has no exact stock equivalent",
    "stablelm": "its MLP has no bias switch and its LayerNorm/partial rotary have no Llama equivalent",
}

_LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "use_cache", "tie_word_embeddings", "rope_parameters", "attention_dropout", "pad_token_id",
    "bos_token_id", "eos_token_id",
)


@dataclass
class FoldPlan:
    """How to fold: the stock class to build, its config, and the factor on the vector."""

    arch: str
    target_class: str  # a transformers *ForCausalLM class name
    config: Any
    scale: float = 1.0  # the down-projection bias receives vector * scale


def unsupported(arch: str, reason: str) -> SteerError:
    return SteerError(
        f"folding is unsupported for {arch}: {reason}; use the vectors file with steer eval / vLLM instead"
    )


def fold_plan(config: Any, place: str = "layer_output") -> FoldPlan:
    """Decide how to fold for a transformers config; a SteerError for what cannot be folded exactly."""
    if place not in PLACES:
        raise SteerError(f"unknown steering place {place!r}; choose one of {', '.join(PLACES)}")
    model_type = getattr(config, "model_type", "?")
    try:
        spec = arch_for_config(config)
    except SteerError:
        raise unsupported(model_type, "it is not in steer's architecture table") from None
    arch = spec.name
    if place == "layer_output" and not spec.mlp_output_is_residual:
        raise unsupported(arch, f"a norm ({spec.post_mlp_norm}) follows the MLP, so a vector added to the "
                                "layer output is not a down_proj bias")
    new = copy.deepcopy(config)
    cls = _causal_lm_class(model_type)
    if arch in ("llama", "granite"):
        new.mlp_bias = True
        scale = 1.0
        if arch == "granite" and place == "layer_output":
            multiplier = float(getattr(config, "residual_multiplier", 1.0))
            if multiplier == 0:
                raise unsupported(arch, "residual_multiplier is 0, so the MLP output never reaches the residual")
            scale = 1.0 / multiplier
        return FoldPlan(arch, cls, new, scale)
    if arch == "qwen2":
        sliding = [i for i, t in enumerate(getattr(config, "layer_types", None) or []) if t != "full_attention"]
        if sliding or getattr(config, "use_sliding_window", False):
            raise unsupported(arch, f"layers {sliding[:5] or 'some'} use sliding-window attention, which "
                                    "LlamaForCausalLM does not have")
        return FoldPlan(arch, "LlamaForCausalLM", _llama_config(config, attention_bias=True), 1.0)
    if arch == "mistral":
        if getattr(config, "sliding_window", None) is not None:
            raise unsupported(arch, f"sliding_window={config.sliding_window} is set, and LlamaForCausalLM has "
                                    "no sliding window")
        return FoldPlan(arch, "LlamaForCausalLM", _llama_config(config, attention_bias=False), 1.0)
    if arch in ("gpt2", "gpt_neox"):
        return FoldPlan(arch, cls, new, 1.0)
    if arch == "starcoder2":
        new.use_bias = True
        return FoldPlan(arch, cls, new, 1.0)
    raise unsupported(arch, _UNSUPPORTED.get(arch, "no exact stock equivalent with an MLP bias is known"))


def _causal_lm_class(model_type: str) -> str:
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if name is None:
        raise unsupported(model_type, "transformers has no causal-LM class for it")
    return name


def _llama_config(config: Any, *, attention_bias: bool) -> Any:
    fields = {k: copy.deepcopy(getattr(config, k)) for k in _LLAMA_FIELDS if hasattr(config, k)}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if config.hidden_size % config.num_attention_heads != 0:
        raise unsupported(config.model_type, "hidden_size is not a multiple of num_attention_heads, "
                                             "which LlamaConfig requires")
    try:
        new = LlamaConfig(**fields, head_dim=head_dim, attention_bias=attention_bias, mlp_bias=True)
    except (ValueError, TypeError) as err:
        raise unsupported(config.model_type, f"its config does not convert to LlamaConfig ({err})") from None
    new.dtype = getattr(config, "dtype", None)
    return new


def fold_vectors(
    model: nn.Module,
    vectors: torch.Tensor,
    place: str = "layer_output",
    *,
    layers: Sequence[int] | None = None,
) -> nn.Module:
    """A stock transformers model whose logits equal ``model`` steered by ``vectors`` at ``place``.

    ``vectors`` is [num_layers, hidden]; ``layers`` limits folding to those rows (default all), as
    ``attach_steering`` does. The input model is left unchanged (weights are shared, not copied).
    """
    plan = fold_plan(model.config, place)
    located = locate(model)
    hidden = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
    check_shape(vectors, located.num_layers, hidden)
    layer_ids = range(located.num_layers) if layers is None else sorted({int(i) for i in layers})
    bad = [i for i in layer_ids if not 0 <= i < located.num_layers]
    if bad:
        raise SteerError(f"layers {bad} do not exist: this model has layers 0..{located.num_layers - 1}")

    folded = _rebuild(model, getattr(transformers, plan.target_class), plan.config)
    target = locate(folded)
    for i in layer_ids:
        down = target.down_proj(i)
        bias = down.bias
        new_bias = bias.detach().to(torch.float32) + plan.scale * vectors[i].to(bias.device, torch.float32)
        down.bias = nn.Parameter(new_bias.to(bias.dtype), requires_grad=False)
    return folded


def _rebuild(model: nn.Module, cls: Any, config: Any) -> nn.Module:
    """``cls(config)`` holding ``model``'s tensors; parameters the new config adds are zeros."""
    ref = next(model.parameters())
    config = copy.deepcopy(config)
    config.dtype = ref.dtype
    with init_empty_weights():  # parameters on the meta device; buffers (RoPE) computed for real
        new = cls(config)
    result = new.load_state_dict(model.state_dict(), strict=False, assign=True)
    if result.unexpected_keys:
        raise SteerError(f"cannot fold: {cls.__name__} has no place for {result.unexpected_keys[:3]} "
                         "(an architecture difference steer does not handle)")
    for key in result.missing_keys:
        module_name, _, name = key.rpartition(".")
        module = new.get_submodule(module_name)
        meta = getattr(module, name)
        if name != "bias":
            raise SteerError(f"cannot fold: {cls.__name__} needs {key}, which the source model lacks")
        setattr(module, name, nn.Parameter(torch.zeros(meta.shape, dtype=ref.dtype, device=ref.device),
                                           requires_grad=False))
    if getattr(config, "tie_word_embeddings", False):
        new.tie_weights()
    leftovers = [n for n, t in list(new.named_parameters()) + list(new.named_buffers()) if t.is_meta]
    if leftovers:
        raise SteerError(f"cannot fold: {leftovers[:3]} were not filled from the source model")
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)
    new.requires_grad_(False)
    return new.eval()


def fold_gap(base: nn.Module, folded: nn.Module, vectors: torch.Tensor, place: str,
             layers: Sequence[int] | None, input_ids: torch.Tensor) -> tuple[float, float]:
    """(max |logit difference|, max |logit|) between ``base`` steered by hooks and ``folded``."""
    device = next(base.parameters()).device
    ids = input_ids.to(device)
    with torch.no_grad():
        with attach_steering(base, vectors, layers=layers, place=place, trainable=False):
            want = base(ids).logits.float()
        got = folded(ids.to(next(folded.parameters()).device)).logits.float().to(want.device)
    return float((got - want).abs().max()), float(want.abs().max())
