"""``steer bench``: what steering costs against LoRA and full fine-tuning, measured side by side.

On one model and one fixed rollout batch (random tokens: the cost of an update does not depend on
what the tokens say), for each setup: trainable parameters, optimizer-state bytes, the time of the
trainer's own update step (``train.update.accumulate_policy_gradients`` + clipping + AdamW), and
the peak memory of that step; a no-grad forward pass over the same batch as the floor; generation
tokens/s with vectors attached against the bare model; and with vLLM, one vector sync against one
full weight reload. Every ratio compares numbers taken in the same run.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (weights included); on CPU the peak
resident set of a fresh process that loads the model and runs the update steps, minus that
process's resident set before it loaded the model (so torch's own import is not counted).
"""

from __future__ import annotations

import copy
import functools
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from steer_cli.errors import SteerError

SETUPS = ("steering", "lora", "full")
RANDOM_PREFIX = "random-"
# Qwen2-shaped random models for benchmarking without downloads: name -> config overrides.
RANDOM_MODELS = {
    "random-50m": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                       intermediate_size=2048, vocab_size=32000),
    "random-150m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                        intermediate_size=3072, vocab_size=32000),
}


def _train_default(name: str) -> Any:
    """The trainer's own default for a setting the bench shares with it (one place for defaults)."""
    from steer_cli.settings import TrainSettings

    return TrainSettings.model_fields[name].default


BACKENDS = ("hf", "vllm")


@dataclass
class BenchConfig:
    model: str = "demo"
    setups: tuple[str, ...] = SETUPS
    backends: tuple[str, ...] = ("hf",)
    sequences: int = 8  # completions in the rollout batch
    prompt_len: int = 64
    completion_len: int = 192
    micro_batch_size: int = 1  # as the paper's DeepScaleR presets (train.micro_batch_size: 1)
    logprob_chunk_tokens: int = field(default_factory=lambda: _train_default("logprob_chunk_tokens"))
    repeats: int = 5
    warmup: int = 1
    gen_prompts: int = 4
    gen_tokens: int = 64
    gen_repeats: int = 9
    dtype: str = "auto"
    seed: int = 0
    lora_rank: int = 4
    memory: bool = True
    vllm_memory_utilization: float = 0.3
    vllm_enforce_eager: bool = False  # the real measurement keeps vLLM's compiled mode


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def machine_info() -> dict[str, Any]:
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import vllm  # noqa: F401

        vllm_version = getattr(vllm, "__version__", "unknown")
    except Exception:
        vllm_version = None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "transformers": transformers.__version__, "vllm": vllm_version,
            "python": platform.python_version()}


def materialize_model(name: str, workdir: Path, seed: int = 0) -> str:
    """A loadable model path: ``random-50m`` etc. are built from a Qwen2 config into ``workdir``."""
    if not name.startswith(RANDOM_PREFIX):
        from steer_cli.models import resolve_model

        return resolve_model(name)
    if name not in RANDOM_MODELS:
        raise SteerError(f"unknown random model {name!r}; choose one of {', '.join(RANDOM_MODELS)}")
    from transformers import AutoModelForCausalLM, Qwen2Config

    from steer_cli.models import quiet_transformers

    quiet_transformers()
    path = workdir / name
    if not (path / "config.json").exists():
        torch.manual_seed(seed)
        config = Qwen2Config(max_position_embeddings=4096, tie_word_embeddings=False, **RANDOM_MODELS[name])
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    return str(path)


def synthetic_batch(vocab: int, cfg: BenchConfig) -> list[tuple[list[int], list[int], float]]:
    g = torch.Generator().manual_seed(cfg.seed)
    seqs = []
    for i in range(cfg.sequences):
        prompt = torch.randint(0, vocab, (cfg.prompt_len,), generator=g).tolist()
        completion = torch.randint(0, vocab, (cfg.completion_len,), generator=g).tolist()
        seqs.append((prompt, completion, 1.0 if i % 2 else -1.0))
    return seqs


def _load(model_path: str, cfg: BenchConfig, device: torch.device) -> Any:
    from steer_cli.models import load_causal_lm

    return load_causal_lm(model_path, dtype=cfg.dtype, device=device)


def _prepare(model: Any, setup: str, cfg: BenchConfig) -> tuple[Any, torch.optim.Optimizer]:
    from steer_cli.patching.setups import prepare_setup

    trainable = prepare_setup(model, setup, lora_rank=cfg.lora_rank, lora_alpha=float(cfg.lora_rank))
    optimizer = torch.optim.AdamW(trainable.params, lr=1e-6)
    return trainable, optimizer


def _update(trainable: Any, optimizer: torch.optim.Optimizer, seqs: list, cfg: BenchConfig,
            device: torch.device) -> None:
    from steer_cli.train.update import accumulate_policy_gradients

    tokens = float(sum(len(c) for _, c, _ in seqs))
    accumulate_policy_gradients(trainable, seqs, global_tokens=tokens, temperature=1.0,
                                micro_batch_size=cfg.micro_batch_size, pad_id=0, device=device,
                                logprob_chunk_tokens=cfg.logprob_chunk_tokens)
    torch.nn.utils.clip_grad_norm_(trainable.params, 2.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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


def time_it(fn: Callable[[], None], repeats: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def interleaved(bare: Callable[[], float], steered: Callable[[], float], repeats: int) -> tuple[list[float], list[float]]:
    """``repeats`` timings of each, taken in pairs whose order alternates (AB, BA, ...), so that a
    slow stretch of the machine or a drift over the run lands on both sides, after one warm-up each."""
    bare(), steered()
    bare_times, steered_times = [], []
    for i in range(repeats):
        if i % 2 == 0:
            bare_times.append(bare())
            steered_times.append(steered())
        else:
            steered_times.append(steered())
            bare_times.append(bare())
    return bare_times, steered_times


def paired_speed_ratio(bare_seconds: list[float], steered_seconds: list[float]) -> float:
    """Median over adjacent pairs of steered tokens/s over bare tokens/s (= bare time / steered time)."""
    return _median([b / s for b, s in zip(bare_seconds, steered_seconds)])


def _generation_result(bare: list[float], steered: list[float], tokens: int) -> dict[str, Any]:
    return {"tokens_per_second_bare": tokens / _median(bare), "tokens_per_second_steered": tokens / _median(steered),
            "steered_over_bare_paired": paired_speed_ratio(bare, steered),
            "seconds_bare_all": bare, "seconds_steered_all": steered, "tokens": tokens}


def measure_setups(base: Any, seqs: list, cfg: BenchConfig, device: torch.device) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for setup in cfg.setups:
        model = copy.deepcopy(base)
        trainable, optimizer = _prepare(model, setup, cfg)
        times = time_it(functools.partial(_update, trainable, optimizer, seqs, cfg, device), cfg.repeats, cfg.warmup,
                        device)
        moments, counters = optimizer_state_bytes(optimizer)
        out[setup] = {
            "trainable_params": trainable.num_trainable,
            "optimizer_state_bytes": moments,
            "optimizer_step_counter_bytes": counters,
            "update_step_seconds": _median(times),
            "update_step_seconds_all": times,
            "peak_memory_bytes": None,
        }
        if trainable.steering is not None:
            trainable.steering.remove()
        del model, trainable, optimizer
    return out


def measure_forward(base: Any, seqs: list, cfg: BenchConfig, device: torch.device) -> list[float]:
    from steer_cli.train import batch

    def forward() -> None:
        with torch.no_grad():
            for start in range(0, len(seqs), cfg.micro_batch_size):
                chunk = seqs[start:start + cfg.micro_batch_size]
                packed = batch.pack_left([c[0] for c in chunk], [c[1] for c in chunk], 0).to(device)
                batch.completion_logprobs(base, packed, 1.0, cfg.logprob_chunk_tokens)

    return time_it(forward, cfg.repeats, cfg.warmup, device)


# ------------------------------------------------------------------------------------ memory

def _memory_child(model_path: str, setup: str, cfg_dict: dict[str, Any], conn: Any) -> None:
    try:
        cfg = BenchConfig(**cfg_dict)
        # Import everything the update needs first: only the model and the update should count.
        import peft  # noqa: F401
        import transformers  # noqa: F401

        from steer_cli.patching import setups, steering  # noqa: F401
        from steer_cli.train import update  # noqa: F401

        before = _rss_bytes()
        device = torch.device("cpu")
        model = _load(model_path, cfg, device)
        seqs = synthetic_batch(model.config.vocab_size, cfg)
        trainable, optimizer = _prepare(model, setup, cfg)
        for _ in range(2):
            _update(trainable, optimizer, seqs, cfg, device)
        conn.send(_peak_rss_bytes() - before)
    except BaseException as err:  # report, don't hang the parent
        conn.send(f"error: {err}")
    finally:
        conn.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process image's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that across fork+exec, so a spawned child would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def measure_peak_memory_cpu(model_path: str, setup: str, cfg: BenchConfig) -> int | None:
    if not Path("/proc/self/statm").exists():
        return None
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_memory_child, args=(model_path, setup, asdict(cfg), child))
    proc.start()
    child.close()
    result = parent.recv() if parent.poll(1800) else "error: timed out"
    proc.join()
    if isinstance(result, str):
        raise SteerError(f"memory measurement of {setup} failed: {result}")
    return int(result)


def measure_peak_memory_cuda(base: Any, setup: str, seqs: list, cfg: BenchConfig, device: torch.device) -> int:
    model = copy.deepcopy(base)
    trainable, optimizer = _prepare(model, setup, cfg)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        _update(trainable, optimizer, seqs, cfg, device)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del model, trainable, optimizer
    return int(peak)


# ------------------------------------------------------------------------------------ generation

def measure_generation_hf(base: Any, cfg: BenchConfig, device: torch.device) -> dict[str, Any]:
    """Greedy generation of a fixed number of tokens, bare vs steered, interleaved."""
    from transformers import GenerationConfig

    from steer_cli.patching.steering import attach_steering

    g = torch.Generator().manual_seed(cfg.seed + 1)
    vocab = base.config.vocab_size
    ids = torch.randint(0, vocab, (cfg.gen_prompts, 32), generator=g).to(device)
    gen = GenerationConfig(max_new_tokens=cfg.gen_tokens, min_new_tokens=cfg.gen_tokens, do_sample=False,
                           pad_token_id=0, eos_token_id=None, use_cache=True, temperature=1.0, top_p=1.0, top_k=0)
    vectors = 0.01 * torch.randn(base.config.num_hidden_layers, base.config.hidden_size, generator=g)
    handle = attach_steering(base, vectors, trainable=False)
    handle.remove()

    def run(steered: bool) -> float:
        nonlocal handle
        if steered:
            handle = attach_steering(base, vectors, trainable=False)
        try:
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen)
            _sync(device)
            return time.perf_counter() - t0
        finally:
            if steered:
                handle.remove()

    bare, steered = interleaved(lambda: run(False), lambda: run(True), cfg.gen_repeats)
    return _generation_result(bare, steered, cfg.gen_prompts * cfg.gen_tokens)


def measure_vllm(model_path: str, cfg: BenchConfig) -> dict[str, Any]:
    """Stock vLLM engine vs the steered one: greedy tokens/s on the same prompts, engine start
    times, and in the steered engine one vector sync against one full weight reload."""
    import vllm
    from safetensors.torch import load_file

    from steer_cli.rollout.vllm import VLLMBackend

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

    def timed(llm: Any) -> Callable[[], float]:
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
            bare_times, steered_times = interleaved(timed(bare), timed(steered.llm), cfg.gen_repeats)
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
        "sync": {"vector_sync_seconds": _median(syncs), "full_reload_seconds": _median(reloads),
                 "vector_sync_seconds_all": syncs, "full_reload_seconds_all": reloads,
                 "vector_numbers": int(vectors.numel()), "weight_numbers": int(sum(w.numel() for w in weights.values()))},
    }


# ------------------------------------------------------------------------------------ main

def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    s = result["setups"]

    def r(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out: dict[str, float | None] = {}
    if "steering" in s and "full" in s:
        out["update_time_steering_over_full"] = r(s["steering"]["update_step_seconds"], s["full"]["update_step_seconds"])
        out["peak_memory_steering_over_full"] = r(s["steering"]["peak_memory_bytes"], s["full"]["peak_memory_bytes"])
        out["optimizer_state_steering_over_full"] = r(s["steering"]["optimizer_state_bytes"], s["full"]["optimizer_state_bytes"])
    if "steering" in s and "lora" in s:
        out["update_time_steering_over_lora"] = r(s["steering"]["update_step_seconds"], s["lora"]["update_step_seconds"])
    if "steering" in s:
        out["update_time_steering_over_forward"] = r(s["steering"]["update_step_seconds"], result["forward_seconds"])
    for backend, gen in (result.get("generation") or {}).items():
        if gen:
            out[f"generation_{backend}_steered_over_bare"] = gen.get("steered_over_bare_paired") or r(
                gen["tokens_per_second_steered"], gen["tokens_per_second_bare"])
    sync = result.get("vllm_sync")
    if sync:
        out["vllm_vector_sync_over_full_reload"] = r(sync["vector_sync_seconds"], sync["full_reload_seconds"])
    return out


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    problems = [f"--{name.replace('_', '-')} must be a positive integer (got {getattr(cfg, name)})"
                for name in ("sequences", "prompt_len", "completion_len", "micro_batch_size", "repeats")
                if getattr(cfg, name) < 1]
    if cfg.logprob_chunk_tokens < 0:
        problems.append(f"--logprob-chunk-tokens must be 0 or more (got {cfg.logprob_chunk_tokens})")
    bad = [s for s in cfg.setups if s not in SETUPS]
    if bad or not cfg.setups:
        problems.append(f"--setups: unknown or none {bad}; choose from {', '.join(SETUPS)}")
    bad = [b for b in cfg.backends if b not in BACKENDS]
    if bad:
        problems.append(f"--backend: unknown {bad}; choose from {', '.join(BACKENDS)}")
    if problems:
        raise SteerError("; ".join(problems))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="steer-bench-") as tmp:
        model_path = materialize_model(cfg.model, Path(tmp), cfg.seed)
        progress(f"loading {cfg.model}")
        base = _load(model_path, cfg, device)
        base.requires_grad_(False)
        seqs = synthetic_batch(base.config.vocab_size, cfg)
        total_params = sum(p.numel() for p in base.parameters())
        num_layers, hidden = base.config.num_hidden_layers, base.config.hidden_size
        progress("update steps per setup")
        setups = measure_setups(base, seqs, cfg, device)
        progress("forward pass")
        forward = measure_forward(base, seqs, cfg, device)
        if cfg.memory:
            for setup in cfg.setups:
                progress(f"peak memory: {setup}")
                if device.type == "cuda":
                    setups[setup]["peak_memory_bytes"] = measure_peak_memory_cuda(base, setup, seqs, cfg, device)
                else:
                    setups[setup]["peak_memory_bytes"] = measure_peak_memory_cpu(model_path, setup, cfg)
        generation: dict[str, Any] = {}
        vllm_sync = None
        if "hf" in cfg.backends:
            progress("generation (hf)")
            generation["hf"] = measure_generation_hf(base, cfg, device)
        if "vllm" in cfg.backends:
            del base
            progress("generation and sync (vllm)")
            v = measure_vllm(model_path, cfg)
            generation["vllm"] = v["generation"]
            vllm_sync = v["sync"]
    result = {
        "kind": "steer-bench",
        "format_version": 1,
        "model": cfg.model,
        "model_params": total_params,
        "num_layers": num_layers,
        "hidden_size": hidden,
        "machine": machine_info(),
        "device": device.type,
        "config": asdict(cfg),
        "setups": setups,
        "forward_seconds": _median(forward),
        "forward_seconds_all": forward,
        "generation": generation,
        "vllm_sync": vllm_sync,
    }
    result["ratios"] = ratios(result)
    return result


def write_json(result: dict[str, Any], path: str | Path) -> None:
    from steer_cli.io import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=2) + "\n")


# (ratio key, target, "<=" or ">=", label)
TARGETS = (
    ("peak_memory_steering_over_full", 0.5, "<=", "peak memory, steering / full"),
    ("update_time_steering_over_full", 0.75, "<=", "update step time, steering / full"),
    ("update_time_steering_over_lora", None, "<=", "update step time, steering / LoRA"),
    ("update_time_steering_over_forward", 2.5, "<=", "update step time, steering / no-grad forward"),
    ("generation_hf_steered_over_bare", 0.98, ">=", "tokens/s with vectors / bare (hf)"),
    ("generation_vllm_steered_over_bare", 0.98, ">=", "tokens/s with vectors / bare (vllm)"),
    ("vllm_vector_sync_over_full_reload", 0.01, "<=", "vLLM vector sync / full weight reload"),
)


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each ratio with its target and whether it is met; plus the exact optimizer-state check."""
    rows = []
    for key, target, op, label in TARGETS:
        value = result["ratios"].get(key)
        if value is None:
            continue
        met = None if target is None else (value <= target if op == "<=" else value >= target)
        rows.append({"key": key, "label": label, "value": value, "target": target, "op": op, "met": met})
    steering = result["setups"].get("steering")
    if steering:
        expected = 2 * result["num_layers"] * result["hidden_size"] * 4
        rows.append({"key": "optimizer_state_steering_bytes", "label": "steering optimizer state (bytes)",
                     "value": steering["optimizer_state_bytes"], "target": expected, "op": "==",
                     "met": steering["optimizer_state_bytes"] == expected})
    return rows
