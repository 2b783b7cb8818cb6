"""Where things live inside each causal-LM family: a data table, not per-model code.

Each entry maps transformers ``config.model_type`` values to attribute paths (dotted, relative to
the ``*ForCausalLM`` model; the MLP paths relative to one decoder layer). A role may list several
candidate paths (attribute names moved between transformers releases); the first that exists wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steer_cli.errors import SteerError


@dataclass(frozen=True)
class ArchSpec:
    """Attribute paths of one architecture family."""

    name: str
    model_types: tuple[str, ...]
    layers: tuple[str, ...] = ("model.layers",)
    down_proj: tuple[str, ...] = ("mlp.down_proj",)
    # The attention block and the MLP of one decoder layer (the attn_* / mlp_* steering places).
    attn: tuple[str, ...] = ("self_attn",)
    mlp: tuple[str, ...] = ("mlp",)
    final_norm: tuple[str, ...] = ("model.norm",)
    unembed: tuple[str, ...] = ("lm_head",)
    # A norm applied to the MLP output before the residual add (Gemma2/3, OLMo2/3): there a bias on
    # down_proj and a vector added to the layer output are different interventions.
    post_mlp_norm: str | None = None
    # Config switch that gives the MLP biases in stock transformers (used when folding vectors).
    mlp_bias_switch: str | None = None

    @property
    def mlp_output_is_residual(self) -> bool:
        """True when the MLP output goes straight into the residual stream."""
        return self.post_mlp_norm is None


ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("llama",), mlp_bias_switch="mlp_bias"),
    ArchSpec("qwen2", ("qwen2",)),
    ArchSpec("qwen3", ("qwen3",)),
    ArchSpec("mistral", ("mistral",)),
    ArchSpec("gemma", ("gemma",)),
    ArchSpec("gemma2", ("gemma2",), post_mlp_norm="post_feedforward_layernorm"),
    ArchSpec("gemma3", ("gemma3_text",), post_mlp_norm="post_feedforward_layernorm"),
    ArchSpec("olmo", ("olmo",)),
    ArchSpec("olmo2", ("olmo2", "olmo3"), post_mlp_norm="post_feedforward_layernorm"),
    ArchSpec("phi3", ("phi3",)),
    ArchSpec("granite", ("granite",), mlp_bias_switch="mlp_bias"),
    ArchSpec("stablelm", ("stablelm",)),
    ArchSpec("starcoder2", ("starcoder2",), down_proj=("mlp.c_proj",)),
    ArchSpec(
        "gpt_neox",
        ("gpt_neox",),
        layers=("gpt_neox.layers",),
        down_proj=("mlp.dense_4h_to_h",),
        attn=("attention",),
        final_norm=("gpt_neox.final_layer_norm",),
        unembed=("lm_head", "embed_out"),
    ),
    ArchSpec(
        "gpt2",
        ("gpt2",),
        layers=("transformer.h",),
        down_proj=("mlp.c_proj",),
        attn=("attn",),
        final_norm=("transformer.ln_f",),
    ),
)

_BY_MODEL_TYPE = {mt: spec for spec in ARCHITECTURES for mt in spec.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def arch_for_config(config: Any) -> ArchSpec:
    """The table entry for a transformers config; a clear error for an unknown family."""
    model_type = getattr(config, "model_type", None)
    spec = _BY_MODEL_TYPE.get(model_type)
    if spec is None:
        raise SteerError(
            f"architecture {model_type!r} is not in steer's patching table (it needs to know where "
            f"the decoder layers, MLP down projection, final norm and unembedding live); "
            f"supported: {', '.join(supported_model_types())}"
        )
    return spec


def get_path(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def resolve_path(root: Any, candidates: tuple[str, ...], what: str, arch: str) -> str:
    """The first candidate attribute path that exists under ``root``; a loud error otherwise."""
    for path in candidates:
        try:
            get_path(root, path)
            return path
        except AttributeError:
            continue
    raise SteerError(
        f"could not find the {what} of this {arch} model (looked for {', '.join(candidates)} on "
        f"{type(root).__name__}); is it a causal LM of that family?"
    )


def resolve(root: Any, candidates: tuple[str, ...], what: str, arch: str) -> Any:
    return get_path(root, resolve_path(root, candidates, what, arch))


@dataclass
class Located:
    """The concrete modules of one loaded model."""

    spec: ArchSpec
    layers_path: str
    layers: Any  # nn.ModuleList of decoder layers
    final_norm: Any
    unembed: Any

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def down_proj(self, index: int) -> Any:
        return resolve(self.layers[index], self.spec.down_proj, "MLP down projection", self.spec.name)

    def attn(self, index: int) -> Any:
        return resolve(self.layers[index], self.spec.attn, "attention block", self.spec.name)

    def mlp(self, index: int) -> Any:
        return resolve(self.layers[index], self.spec.mlp, "MLP", self.spec.name)


def locate(model: Any) -> Located:
    """Find decoder layers, final norm and unembedding of a transformers causal LM.

    PEFT wrappers are looked through, so a LoRA-wrapped model is located like its base model.
    """
    base = model
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        base = get_base()
    spec = arch_for_config(base.config)
    layers_path = resolve_path(base, spec.layers, "decoder layers", spec.name)
    return Located(
        spec=spec,
        layers_path=layers_path,
        layers=get_path(base, layers_path),
        final_norm=resolve(base, spec.final_norm, "final norm", spec.name),
        unembed=resolve(base, spec.unembed, "unembedding (lm_head)", spec.name),
    )
