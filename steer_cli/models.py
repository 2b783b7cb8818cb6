"""Model names and loading: hub ids, local directories, short names, and the built-in demo.

``--model`` takes a hub id (``Qwen/Qwen2.5-Math-7B``), a local directory, or a short name
(``Qwen2.5-Math-7B``) that resolves to ``$STEER_MODELS_DIR/<name>`` when that exists and to its
hub id otherwise. ``demo`` is the tiny model shipped inside the package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import logging as hf_logging

from steer_cli.demo import DEMO_MODEL_DIR
from steer_cli.errors import SteerError


@dataclass(frozen=True)
class KnownModel:
    short: str  # the name users type, as on the hub
    hub_id: str
    preset: str  # directory of its presets under presets/


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel("Qwen2.5-1.5B", "Qwen/Qwen2.5-1.5B", "qwen2.5-1.5b"),
    KnownModel("Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "qwen2.5-1.5b-instruct"),
    KnownModel("Qwen2.5-7B", "Qwen/Qwen2.5-7B", "qwen2.5-7b"),
    KnownModel("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b-instruct"),
    KnownModel("Qwen2.5-14B", "Qwen/Qwen2.5-14B", "qwen2.5-14b"),
    KnownModel("Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-1.5B", "qwen2.5-math-1.5b"),
    KnownModel("Qwen2.5-Math-7B", "Qwen/Qwen2.5-Math-7B", "qwen2.5-math-7b"),
    KnownModel("Llama-3.1-8B", "meta-llama/Llama-3.1-8B", "llama3.1-8b"),
    KnownModel("Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "llama3.1-8b-instruct"),
    KnownModel("OLMo-2-1124-7B-SFT", "allenai/OLMo-2-1124-7B-SFT", "olmo2-7b-sft"),
)

DEMO = "demo"


def demo_model_dir() -> Path:
    return DEMO_MODEL_DIR


def known_model(name: str) -> KnownModel | None:
    """The table entry for a short name, hub id or directory named like one (case-insensitive)."""
    key = Path(str(name).rstrip("/")).name.lower()
    for m in KNOWN_MODELS:
        if key in (m.short.lower(), m.preset) or str(name).lower() == m.hub_id.lower():
            return m
    return None


def resolve_model(name: str) -> str:
    """A local directory or hub id that ``from_pretrained`` can load."""
    if name == DEMO:
        return str(demo_model_dir())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise SteerError(f"model directory {name} does not exist; pass an existing directory or a hub id")
    models_dir = os.environ.get("STEER_MODELS_DIR")
    if models_dir and (Path(models_dir).expanduser() / name).is_dir():
        return str(Path(models_dir).expanduser() / name)
    known = known_model(name)
    if known is not None and "/" not in name:
        return known.hub_id
    if name.count("/") == 1:
        return name
    hint = f"; known short names: {', '.join(m.short for m in KNOWN_MODELS)}"
    raise SteerError(f"model {name!r} is not a local directory, a hub id (owner/name) or a known short name{hint}")


def model_slug(name: str) -> str:
    """A short name for output paths: runs/<slug>/..."""
    if name == DEMO:
        return DEMO
    known = known_model(name)
    if known is not None:
        return known.short
    return Path(str(name).rstrip("/")).name or "model"


def pick_dtype(dtype: str, device: Any, config: Any = None) -> Any:
    """The compute dtype. ``auto``: on a GPU the checkpoint's own bfloat16/float16 (``config``),
    else bfloat16, as the paper trains; on a CPU float32 (CPUs without bfloat16 units emulate it
    slowly, and the demo and tests are float32)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if getattr(device, "type", str(device)) != "cuda":
        return torch.float32
    own = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    own = getattr(torch, own) if isinstance(own, str) and hasattr(torch, own) else own
    return own if own in (torch.bfloat16, torch.float16) else torch.bfloat16


def quiet_transformers() -> None:
    """No per-shard progress bars or advisory warnings from transformers in our output."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _auto_from_pretrained(auto: Any, path: str, what: str, revision: str | None, trust_remote_code: bool) -> Any:
    """``auto.from_pretrained(path)``; a load failure is a one-line error."""
    quiet_transformers()
    try:
        return auto.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise SteerError(f"cannot load {what} from {path}: {_first_line(err)}") from None


def load_tokenizer(name: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    tok = _auto_from_pretrained(AutoTokenizer, resolve_model(name), "a tokenizer", revision, trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_config(name: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The model's config, checked to be a decoder-only causal LM that transformers can build."""
    path = resolve_model(name)
    config = _auto_from_pretrained(AutoConfig, path, "model config", revision, trust_remote_code)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and not trust_remote_code:
        raise SteerError(
            f"{path} is a {type(config).__name__} ({config.model_type}), not a causal language model; "
            "steer needs a decoder-only LM"
        )
    return config


def load_causal_lm(
    name: str,
    *,
    dtype: str = "auto",
    device: Any = "cpu",
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` with clear errors; eval mode (dropout off)."""
    path = resolve_model(name)
    config = load_config(name, revision=revision, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code,
                              "dtype": pick_dtype(dtype, torch.device(device), config)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    except ValueError as err:
        msg = _first_line(err)
        if "Unrecognized configuration class" in msg or "AutoModelForCausalLM" in msg:
            raise SteerError(
                f"{path} is a {type(config).__name__} ({config.model_type}), not a causal language model; "
                "steer needs a decoder-only LM"
            ) from None
        raise SteerError(f"cannot load model from {path}: {msg}") from None
    except OSError as err:
        raise SteerError(f"cannot load model weights from {path}: {_first_line(err)}") from None
    model.to(device)
    model.eval()
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
