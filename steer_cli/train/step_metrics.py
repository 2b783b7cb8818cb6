"""The line a step writes into a run's metrics.jsonl."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object

from steer_cli.train.fsdp import training_state_bytes
from steer_cli.train.job import masked_vectors


def step_metrics(trainer: Any, run: Any, step: int, local: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """One run's metrics.jsonl line of a step (every process calls it: the numbers are gathered)."""
    if trainer.world > 1:
        parts = gather_object([local])
    else:
        parts = [local]
    cat = {k: [x for p in parts for x in p[k]] for k in ("correct", "rewards", "lengths", "stopped", "same")}
    gen_tokens = sum(p["gen_tokens"] for p in parts)
    t_gen = max(p["t_gen"] for p in parts)
    rewards = torch.tensor(cat["rewards"])
    lengths = torch.tensor(cat["lengths"], dtype=torch.float32)
    m: dict[str, Any] = {
        "step": step + 1,
        "epoch": round((step + 1) * trainer.s.train.prompts_per_step / len(trainer.examples), 4),
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std(unbiased=False)),
        # a plug-in's rewards are not right or wrong: no accuracy
        "accuracy": float(torch.tensor(cat["correct"], dtype=torch.float32).mean()) if cat["correct"] else None,
        "reward_errors": sum(x for p in parts for x in p["reward_errors"]),
        "frac_same_reward_groups": float(np.mean(cat["same"])),
        "completion_len_mean": float(lengths.mean()),
        "completion_len_max": int(lengths.max()),
        "frac_truncated": 1.0 - float(np.mean(cat["stopped"])),
        "loss": shared["loss"],
        "grad_norm": shared["grad_norm"],
        "lr": shared["lr"],
        "skipped_nonfinite": 0 if shared["finite"] else 1,
        "nonfinite_total": run.nonfinite_total,
        # the job's times: several runs share each phase
        "time_generate": t_gen,
        "time_grade": shared["time_grade"],
        "time_update": shared["time_update"],
        "time_sync": shared["time_sync"],
        "time_step": shared["time_step"],
        "gen_tokens": gen_tokens,
        "tokens_per_second": gen_tokens / t_gen if t_gen > 0 else None,
    }
    if trainer.multi:
        m["runs_in_job"] = len(trainer.active)
    if shared["kl"] is not None:
        m["kl"] = shared["kl"]
    if run.state_bytes is None and run.optimizer.state:  # fixed once state exists
        run.state_bytes = training_state_bytes(run.params, run.optimizer)
    m["state_bytes_per_process"] = run.state_bytes
    if trainer.acc.device.type == "cuda":
        m["gpu_memory_peak_bytes"] = int(torch.cuda.max_memory_allocated(trainer.acc.device))
    if run.trainable.steering is not None:
        norms = masked_vectors(run).norm(dim=-1)
        m["vector_norms"] = [round(float(x), 6) for x in norms]
    return m
