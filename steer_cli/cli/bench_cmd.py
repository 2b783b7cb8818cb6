"""steer bench: steering vs LoRA vs full fine-tuning cost, measured side by side in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from steer_cli.cli import app
from steer_cli.cli.common import info, parse_int_list, parse_str_list, run_command


@app.command("bench")
def bench_command(
    model: Optional[str] = typer.Option(None, "--model", help="Model to measure: hub id, local dir, 'demo' (default), a random Qwen2 (random-50m, random-150m, random-1b), or a real geometry with N layers (qwen2.5-math-7b-2layers)."),
    setups: Optional[str] = typer.Option(None, "--setups", help="Setups to compare, comma-separated (default steering,lora,full)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Generation backends to measure: hf (default), vllm, hf,vllm, or none."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Weights dtype: auto (bfloat16 on GPU, float32 on CPU; default), float32, bfloat16, float16."),
    sequences: Optional[int] = typer.Option(None, "--sequences", help="Completions in the fixed rollout batch (default 8)."),
    prompt_len: Optional[int] = typer.Option(None, "--prompt-len", help="Prompt tokens per sequence (default 64)."),
    completion_len: Optional[int] = typer.Option(None, "--completion-len", help="Completion tokens per sequence (default 192)."),
    micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size", help="Sequences per forward/backward pass (default 1, as the paper's DeepScaleR presets)."),
    logprob_chunk_tokens: Optional[int] = typer.Option(None, "--logprob-chunk-tokens", help="Tokens per chunk of the log-softmax over the vocabulary (default: the trainer's, train.logprob_chunk_tokens; 0 = all at once)."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Timed repeats, setups interleaved in each (the median is reported) after one warm-up (default 5)."),
    timing: Optional[bool] = typer.Option(None, "--timing/--no-timing", help="Time the update steps (default on; off measures memory only)."),
    memory: Optional[bool] = typer.Option(None, "--memory/--no-memory", help="Measure peak memory (a fresh process per setup; default on)."),
    memory_lengths: Optional[str] = typer.Option(None, "--memory-lengths", help="Also measure peak memory at these completion lengths, e.g. 512,1024,2048."),
    memory_layers: Optional[str] = typer.Option(None, "--memory-layers", help="Also at these depths (synthetic models), e.g. 1,2; with two lengths and two depths a per-token and per-layer fit predicts the real depth."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON (read by `steer report`)."),
) -> None:
    """Measure trainable parameters, optimizer state, update-step time and memory per setup,
    generation speed with vectors attached, and (vLLM) vector sync vs full reload."""
    from steer_cli.bench import BenchConfig, check_targets, run_bench, write_json

    given = {"model": model, "sequences": sequences, "prompt_len": prompt_len, "completion_len": completion_len,
             "micro_batch_size": micro_batch_size, "logprob_chunk_tokens": logprob_chunk_tokens,
             "repeats": repeats, "memory": memory, "timing": timing, "dtype": dtype,
             "setups": tuple(parse_str_list(setups) or ()) if setups is not None else None,
             "backends": tuple(parse_str_list(backend) or ()) if backend is not None else None,
             "memory_lengths": tuple(run_command(parse_int_list, memory_lengths, "--memory-lengths"))
             if memory_lengths is not None else None,
             "memory_layers": tuple(run_command(parse_int_list, memory_layers, "--memory-layers"))
             if memory_layers is not None else None}
    cfg = BenchConfig(**{k: v for k, v in given.items() if v is not None})
    result = run_command(run_bench, cfg, lambda msg: info(f"[dim]bench: {msg}[/dim]"))
    result["targets"] = check_targets(result)
    if json_path is not None:
        run_command(write_json, result, json_path)
        info(f"wrote {json_path}")
    from steer_cli.cli.bench_render import render

    render(result)
