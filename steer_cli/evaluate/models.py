"""Models and generation backends of an evaluation: vectors read and checked against the model,
the hf base model loaded once and shared by base, steering and LoRA targets, or a vLLM engine."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from peft import PeftModel
from transformers import AutoConfig

from steer_cli.errors import SteerError
from steer_cli.evaluate.targets import Target
from steer_cli.models import load_causal_lm, quiet_transformers, resolve_model
from steer_cli.patching.setups import convert_pissa_adapter, is_pissa_adapter
from steer_cli.patching.steering import attach_steering
from steer_cli.patching.strength import kept_layers, scaled_vectors
from steer_cli.rollout.hf import HFBackend
from steer_cli.settings import Settings
from steer_cli.vectors.file import check_fits, load_vectors


@dataclass
class LoadedVectors:
    tensor: Any  # float32 [L, d]
    layers: Optional[tuple[int, ...]]
    place: str
    sha256: str


def model_dims(settings: Settings, name: Optional[str] = None) -> tuple[int, int]:
    """(num_layers, hidden_size) from the model's config, without loading weights."""

    quiet_transformers()
    path = resolve_model(name or settings.model.name)
    try:
        config = AutoConfig.from_pretrained(path, revision=settings.model.revision,
                                            trust_remote_code=settings.model.trust_remote_code)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SteerError(f"cannot load model config from {path}: {first}") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not layers or not hidden:
        raise SteerError(f"cannot tell the number of layers and hidden size of {path} from its config")
    return int(layers), int(hidden)


def load_target_vectors(path: Path, settings: Settings, dims: tuple[int, int]) -> LoadedVectors:
    """Read a vectors file and check it fits the model (both shapes named if not)."""

    tensor, meta = load_vectors(path)
    check_fits(tensor, dims[0], dims[1], source=path)
    layers = meta.get("layers")
    layer_ids = None if layers is None or list(layers) == list(range(dims[0])) else tuple(int(i) for i in layers)
    place = meta.get("place") or settings.setup.steering.place
    digest = hashlib.sha256(tensor.to(torch.float32).contiguous().numpy().tobytes()).hexdigest()
    return LoadedVectors(tensor, layer_ids, str(place), digest)


class EvalModels:
    """Loads models lazily and hands out one generation backend per target; the hf base model is
    shared by the base, steering and LoRA targets, and so is one vLLM engine by the base and
    steering targets (vectors swapped in place between targets; ``places``: the steering places it
    installs, so targets of several places share it too). ``close()`` shuts that engine down."""

    def __init__(self, settings: Settings, tokenizer: Any, places: tuple[str, ...] = ()) -> None:
        self.s = settings
        self.tokenizer = tokenizer
        self._base: Any = None
        self.places = places
        self._engine: Any = None
        self._engine_path: Optional[str] = None

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    def _device(self) -> str:
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _load(self, name: str) -> Any:
        m = self.s.model
        return load_causal_lm(name, dtype=m.dtype, device=self._device(), revision=m.revision,
                              trust_remote_code=m.trust_remote_code, attn_implementation=m.attn_implementation)

    def base_model(self) -> Any:
        """The hf base model (loaded on first use), as the base and steering targets get it."""
        if self._base is None:
            self._base = self._load(self.s.model.name)
        return self._base

    @contextlib.contextmanager
    def backend(self, target: Target, vectors: Optional[LoadedVectors]) -> Iterator[Any]:
        if self.s.rollout.backend == "vllm":
            yield from self._vllm(target, vectors)
            return

        batch = self.s.rollout.batch_prompts
        if target.setup == "base":
            yield HFBackend(self.base_model(), self.tokenizer, batch_prompts=batch)
        elif target.setup == "steering":
            assert vectors is not None
            handle = attach_steering(self.base_model(), vectors.tensor, layers=vectors.layers,
                                     place=vectors.place, trainable=False, scale=target.scale,
                                     subset=target.layers)
            try:
                yield HFBackend(self.base_model(), self.tokenizer, batch_prompts=batch)
            finally:
                handle.remove()
        elif target.setup == "lora":
            model = PeftModel.from_pretrained(self.base_model(), str(target.adapter), is_trainable=False)
            model.eval()
            self._base = None  # the adapter's layers now live in the base model's modules
            try:
                yield HFBackend(model, self.tokenizer, batch_prompts=batch)
            finally:
                del model
        else:
            assert target.weights is not None
            self._base = None  # two full models need not share memory
            model = self._load(str(target.weights))
            try:
                yield HFBackend(model, self.tokenizer, batch_prompts=batch)
            finally:
                del model

    def _vllm(self, target: Target, vectors: Optional[LoadedVectors]) -> Iterator[Any]:
        make_eval_backend = vllm_factory()

        tensor = None
        if vectors is not None:
            # the engine adds every row: those of unsteered (or left-out) layers must be zero
            kept = kept_layers(vectors.layers, target.layers, vectors.tensor.shape[0])
            tensor = scaled_vectors(vectors.tensor, target.scale, kept)
        model_path = str(target.weights) if target.weights else resolve_model(self.s.model.name)
        if target.adapter is None and target.weights is None:
            engine = self._shared_engine(model_path, vectors.place if vectors is not None else None)
            if tensor is None:  # the base model: no vector anywhere
                tensor = torch.zeros(engine.num_layers, engine.hidden_size)
            engine.set_vectors(tensor, place=vectors.place if vectors is not None else None)
            yield engine
            return
        self.close()  # one engine at a time: the shared one goes before an adapter's or a checkpoint's
        with tempfile.TemporaryDirectory(prefix="steer-eval-lora-") as tmp:
            adapter = plain_adapter(self.s, target.adapter, Path(tmp)) if target.adapter else None
            backend = make_eval_backend(self.s, model_path, vectors=tensor, adapter=adapter,
                                        place=vectors.place if vectors is not None else "layer_output")
            try:
                yield backend
            finally:
                close = getattr(backend, "close", None)
                if close:
                    close()

    def _shared_engine(self, model_path: str, place: Optional[str]) -> Any:
        make_eval_backend = vllm_factory()
        """The engine of base and steering targets: started once, restarted only for a place it lacks."""
        engine = self._engine
        if engine is not None and (self._engine_path != model_path or (place and place not in engine.places)):
            self.close()
            engine = None
        if engine is None:
            places = tuple(dict.fromkeys([p for p in (place, *self.places) if p] or ["layer_output"]))
            engine = make_eval_backend(self.s, model_path, place=places[0], places=places[1:])
            self._engine, self._engine_path = engine, model_path
        return engine


def plain_adapter(settings: Settings, adapter: Path, tmp: Path) -> str:
    """vLLM puts an adapter on the original weights. Training writes PiSSA adapters converted
    for that; an unconverted one (saved as trained, for W - B0 A0) is converted here, on a CPU
    copy of the base model. (The hf backend loads either kind as it is: peft reruns PiSSA.)"""
    if not is_pissa_adapter(adapter):
        return str(adapter)

    m = settings.model
    base = load_causal_lm(m.name, dtype=m.dtype, device="cpu", revision=m.revision,
                          trust_remote_code=m.trust_remote_code)
    return str(convert_pissa_adapter(base, adapter, tmp / "adapter"))


def vllm_factory() -> Callable[..., Any]:
    """``steer_cli.rollout.factory.make_eval_backend(settings, model_path, vectors=, adapter=)``."""
    try:
        # lazy: the vLLM backend is an optional extra; its absence is a one-line error here
        from steer_cli.rollout.factory import make_eval_backend
    except ImportError as err:
        raise SteerError(f"vLLM backend not available ({err}); use --backend hf") from None
    return make_eval_backend
