"""steer bench: steering vs LoRA vs full fine-tuning cost, measured side by side in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from steer_cli.cli import app
from steer_cli.cli.common import info, parse_str_list, run_command


@app.command("bench")
def bench_command(
    model: Optional[str] = typer.Option(None, "--model", help="Model to measure: hub id, local dir, 'demo' (default), or a random Qwen2 shape: random-50m, random-150m."),
    setups: Optional[str] = typer.Option(None, "--setups", help="Setups to compare, comma-separated (default steering,lora,full)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Generation backends to measure: hf (default), vllm, or hf,vllm."),
    sequences: Optional[int] = typer.Option(None, "--sequences", help="Completions in the fixed rollout batch (default 8)."),
    prompt_len: Optional[int] = typer.Option(None, "--prompt-len", help="Prompt tokens per sequence (default 64)."),
    completion_len: Optional[int] = typer.Option(None, "--completion-len", help="Completion tokens per sequence (default 192)."),
    micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size", help="Sequences per forward/backward pass (default 1, as the paper's DeepScaleR presets)."),
    logprob_chunk_tokens: Optional[int] = typer.Option(None, "--logprob-chunk-tokens", help="Tokens per chunk of the log-softmax over the vocabulary (default: the trainer's, train.logprob_chunk_tokens; 0 = all at once)."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Timed repeats (the median is reported) after one warm-up (default 5)."),
    memory: Optional[bool] = typer.Option(None, "--memory/--no-memory", help="Measure peak memory (a fresh process per setup on CPU; default on)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON (read by `steer report`)."),
) -> None:
    """Measure trainable parameters, optimizer state, update-step time and memory per setup,
    generation speed with vectors attached, and (vLLM) vector sync vs full reload."""
    from steer_cli.bench import BenchConfig, check_targets, run_bench, write_json

    given = {"model": model, "sequences": sequences, "prompt_len": prompt_len, "completion_len": completion_len,
             "micro_batch_size": micro_batch_size, "logprob_chunk_tokens": logprob_chunk_tokens,
             "repeats": repeats, "memory": memory,
             "setups": tuple(parse_str_list(setups) or ()) if setups is not None else None,
             "backends": tuple(parse_str_list(backend) or ()) if backend is not None else None}
    cfg = BenchConfig(**{k: v for k, v in given.items() if v is not None})
    result = run_command(run_bench, cfg, lambda msg: info(f"[dim]bench: {msg}[/dim]"))
    result["targets"] = check_targets(result)
    if json_path is not None:
        run_command(write_json, result, json_path)
        info(f"wrote {json_path}")
    _render(result)


def _render(result: dict) -> None:
    from rich.table import Table

    from steer_cli.report_tables import human_bytes, human_count, human_seconds
    from steer_cli.terminal import print_table, print_text, stdout_console

    console = stdout_console()
    m = result["machine"]
    setups = result["setups"]
    table = Table(title=f"steer bench · {result['model']} ({human_count(result['model_params'])} params) · "
                        f"{m['gpu'] or m['cpu']} · torch {m['torch']}")
    table.add_column("")
    for name in setups:
        table.add_column(name, justify="right")
    rows = [
        ("trainable parameters", lambda s: human_count(s["trainable_params"])),
        ("optimizer state", lambda s: human_bytes(s["optimizer_state_bytes"])),
        ("update step (median)", lambda s: human_seconds(s["update_step_seconds"])),
        ("peak memory of the update", lambda s: human_bytes(s["peak_memory_bytes"]) if s["peak_memory_bytes"] else "-"),
    ]
    for label, fmt in rows:
        table.add_row(label, *[fmt(s) for s in setups.values()])
    print_table(console, table)
    print_text(console, f"no-grad forward pass on the same batch: {human_seconds(result['forward_seconds'])}")
    for backend, gen in (result.get("generation") or {}).items():
        start = ""
        if gen.get("engine_start_seconds_bare") is not None:
            start = (f" (engine start {human_seconds(gen['engine_start_seconds_bare'])} bare, "
                     f"{human_seconds(gen['engine_start_seconds_steered'])} steered)")
        print_text(console, f"generation ({backend}): {gen['tokens_per_second_bare']:.1f} tok/s bare, "
                            f"{gen['tokens_per_second_steered']:.1f} tok/s with vectors{start}")
    if result.get("vllm_sync"):
        sync = result["vllm_sync"]
        print_text(console, f"vLLM: vector sync {human_seconds(sync['vector_sync_seconds'])}, "
                            f"full weight reload {human_seconds(sync['full_reload_seconds'])}")
    targets = Table(title="ratios (measured side by side in this run)")
    for col in ("ratio", "value", "target", "met"):
        targets.add_column(col, justify="right" if col != "ratio" else "left")
    for row in result["targets"]:
        value = f"{row['value']:.3f}" if isinstance(row["value"], float) else str(row["value"])
        target = "-" if row["target"] is None else f"{row['op']} {row['target']}"
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[row["met"]]
        targets.add_row(row["label"], value, target, met)
    print_table(console, targets)
