"""Peak memory of an update step, each measured in a fresh process, and how it scales.

CPU: the peak resident set (VmHWM) of a spawned process that loads the model and takes the update
steps, minus its resident set before loading (torch's own import is not counted). CUDA: that
process's ``torch.cuda.max_memory_allocated`` (weights included, nothing else on the card).

``memory_scaling`` measures at several completion lengths and, for synthetic models, several
depths, and fits ``M(L, T) = W0 + L * w + T * (a + L * b)``: weights outside the layers (W0: the
embedding and head), weights per layer (w), per-token memory outside the layers (a: the chunked
log-softmax, embeddings), and per-token memory per layer (b: activations kept for backward). From
that it predicts the real depth at the presets' sequence lengths. The chunked log-softmax adds a
term that grows with the completion up to one chunk (see ``fit_scaling``).
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch

from steer_cli.bench.config import BenchConfig
from steer_cli.bench.models import real_depth
from steer_cli.errors import SteerError

# Sequence lengths (prompt + completion) of the paper's presets: 4K Qwen2.5-Math, 8K the others.
PRESET_SEQUENCE_LENGTHS = (4096, 8192)


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


def _memory_child(model_path: str, setup: str, cfg_dict: dict[str, Any], device_type: str, conn: Any) -> None:
    try:
        cfg = BenchConfig(**cfg_dict)
        # lazy: imported here, before the baseline is read, so that only the model and the update count.
        import peft  # noqa: F401
        import transformers  # noqa: F401

        from steer_cli.bench.timing import prepare, synthetic_batch, update
        from steer_cli.models import load_causal_lm
        from steer_cli.patching import setups, steering  # noqa: F401
        from steer_cli.train import update as _update  # noqa: F401

        device = torch.device(device_type)
        if device.type == "cuda":
            torch.cuda.init()
            torch.cuda.reset_peak_memory_stats()
        before = _rss_bytes()
        model = load_causal_lm(model_path, dtype=cfg.dtype, device=device)
        # One micro-batch: the peak is that of one forward/backward pass (gradients accumulate in place).
        seqs = synthetic_batch(model.config.vocab_size, replace(cfg, sequences=cfg.micro_batch_size))
        trainable, optimizer = prepare(model, setup, cfg)
        # Full fine-tuning peaks in its second step (AdamW state beside gradients and activations);
        # the others' optimizer state is tiny, so their first step is their peak.
        for _ in range(cfg.memory_updates if setup == "full" else 1):
            update(trainable, optimizer, seqs, cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            conn.send(int(torch.cuda.max_memory_allocated()))
        else:
            conn.send(_peak_rss_bytes() - before)
    except BaseException as err:  # report, don't hang the parent
        conn.send(f"error: {type(err).__name__}: {err}")
    finally:
        conn.close()


def measure_peak_memory(model_path: str, setup: str, cfg: BenchConfig, device: torch.device) -> int | None:
    """Peak memory of ``cfg.memory_updates`` update steps of ``setup``, in a fresh process."""
    if device.type != "cuda" and not Path("/proc/self/statm").exists():
        return None
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_memory_child, args=(model_path, setup, asdict(cfg), device.type, child))
    proc.start()
    child.close()
    result = parent.recv() if parent.poll(3600) else "error: timed out"
    proc.join()
    if isinstance(result, str):
        raise SteerError(f"memory measurement of {setup} failed: {result}")
    return int(result)


def fit_scaling(points: list[dict[str, Any]], real_layers: int | None, chunk: int = 0) -> dict[str, Any] | None:
    """Least-squares fit of ``M = W0 + L*w + T*(a + L*b) + min(C, chunk)*c`` over points (layers L,
    tokens per pass T, completion tokens per pass C, bytes M).

    The last term is the chunked log-softmax: its [chunk x vocabulary] logits grow with the
    completion only up to one chunk, then stay. It is fitted only where the points tell it apart
    from the per-token term (some completions shorter and some longer than a chunk). Needs two
    depths and two lengths; returns the coefficients and, with ``real_layers``, predictions at the
    real depth for the measured lengths and the presets' (where completions exceed a chunk).
    """
    depths = {p["layers"] for p in points}
    lengths = {p["tokens"] for p in points}
    if len(depths) < 2 or len(lengths) < 2:
        return None
    comp = [p.get("completion_tokens", p.get("completion_len", p["tokens"])) for p in points]
    capped = [min(c, chunk) for c in comp] if chunk else []
    with_chunk = bool(chunk) and len(set(capped)) > 1 and any(c > chunk for c in comp) and len(lengths) > 2

    def row(layers: int, tokens: int, completion: int) -> list[float]:
        r = [1.0, layers, tokens, layers * tokens]
        return r + [min(completion, chunk)] if with_chunk else r

    x = torch.tensor([row(p["layers"], p["tokens"], c) for p, c in zip(points, comp)], dtype=torch.float64)
    y = torch.tensor([float(p["bytes"]) for p in points], dtype=torch.float64)
    coef = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    residual = (x @ coef - y).abs().max().item()
    coef_l = coef.tolist()
    fit: dict[str, Any] = {"bytes_fixed": coef_l[0], "bytes_per_layer": coef_l[1], "bytes_per_token": coef_l[2],
                           "bytes_per_token_per_layer": coef_l[3],
                           "bytes_per_logprob_chunk_token": coef_l[4] if with_chunk else None,
                           "logprob_chunk_tokens": chunk, "max_abs_residual_bytes": residual}
    if real_layers:
        fit["real_layers"] = real_layers
        prompt = {p["tokens"]: p["tokens"] - c for p, c in zip(points, comp)}
        # Measured lengths keep their own prompt share; the presets' lengths are whole sequences
        # whose completions are longer than a chunk.
        targets = {t: t - prompt[t] for t in lengths}
        targets.update({t: t for t in PRESET_SEQUENCE_LENGTHS if t not in targets})
        fit["predicted_bytes"] = {str(t): float(torch.tensor(row(real_layers, t, c), dtype=torch.float64) @ coef)
                                  for t, c in sorted(targets.items())}
    return fit


def memory_scaling(cfg: BenchConfig, materialize: Callable[[int | None], str], device: torch.device,
                   progress: Callable[[str], None], default_layers: int) -> dict[str, Any]:
    """Peak memory per setup at each completion length in ``cfg.memory_lengths`` and each depth in
    ``cfg.memory_layers``; a fit per setup (see ``fit_scaling``)."""
    lengths = cfg.memory_lengths or (cfg.completion_len,)
    depths = cfg.memory_layers or (default_layers,)
    points: dict[str, list[dict[str, Any]]] = {s: [] for s in cfg.setups}
    for layers in depths:
        path = materialize(layers if cfg.memory_layers else None)
        for length in lengths:
            for setup in cfg.setups:
                progress(f"peak memory: {setup}, {layers} layers, {length}-token completions")
                peak = measure_peak_memory(path, setup, replace(cfg, completion_len=length), device)
                # Tokens in one forward/backward pass: what activations scale with.
                points[setup].append({"layers": layers, "completion_len": length, "bytes": peak,
                                      "tokens": cfg.micro_batch_size * (cfg.prompt_len + length),
                                      "completion_tokens": cfg.micro_batch_size * length})
    return {"points": points,
            "fit": {s: fit_scaling(p, real_depth(cfg.model), cfg.logprob_chunk_tokens) for s, p in points.items()},
            "micro_batch_size": cfg.micro_batch_size, "logprob_chunk_tokens": cfg.logprob_chunk_tokens}
