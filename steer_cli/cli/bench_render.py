"""The terminal view of a ``steer bench`` result (rich tables)."""

from __future__ import annotations

from typing import Any

from steer_cli.terminal import print_table, print_text, stdout_console


def render(result: dict[str, Any]) -> None:
    from rich.table import Table

    from steer_cli.report.tables import human_bytes, human_count, human_seconds

    console = stdout_console()
    m = result["machine"]
    setups = result["setups"]
    dtype = f" · {result['dtype']}" if result.get("dtype") else ""
    table = Table(title=f"steer bench · {result['model']} ({human_count(result['model_params'])} params) · "
                        f"{m['gpu'] or m['cpu']} · torch {m['torch']}{dtype}")
    table.add_column("")
    for name in setups:
        table.add_column(name, justify="right")

    def seconds(s: dict[str, Any], key: str) -> str:
        return human_seconds(s[key]) if s.get(key) is not None else "-"

    rows = [
        ("trainable parameters", lambda s: human_count(s["trainable_params"])),
        ("optimizer state", lambda s: human_bytes(s["optimizer_state_bytes"])),
        ("update step (median)", lambda s: seconds(s, "update_step_seconds")),
        ("update step (min / max)", lambda s: f"{seconds(s, 'update_step_seconds_min')} / "
                                              f"{seconds(s, 'update_step_seconds_max')}"
         if s.get("update_step_seconds_min") is not None else "-"),
        ("peak memory of the update", lambda s: human_bytes(s["peak_memory_bytes"]) if s["peak_memory_bytes"] else "-"),
    ]
    for label, fmt in rows:
        table.add_row(label, *[fmt(s) for s in setups.values()])
    print_table(console, table)
    if result.get("forward_seconds"):
        print_text(console, "no-grad forward pass on the same batch: "
                            f"{human_seconds(result['forward_seconds'])}")
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
    if result.get("memory_scaling"):
        _render_scaling(console, result["memory_scaling"])
    targets = Table(title="ratios (measured side by side in this run; times: median of per-repeat ratios)")
    for col in ("ratio", "value", "target", "met"):
        targets.add_column(col, justify="right" if col != "ratio" else "left")
    for row in result["targets"]:
        value = f"{row['value']:.3f}" if isinstance(row["value"], float) else str(row["value"])
        target = "-" if row["target"] is None else f"{row['op']} {row['target']}"
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[row["met"]]
        targets.add_row(row["label"], value, target, met)
    print_table(console, targets)


def _render_scaling(console: Any, scaling: dict[str, Any]) -> None:
    from rich.table import Table

    from steer_cli.report.tables import human_bytes

    for setup, points in scaling["points"].items():
        table = Table(title=f"peak memory of the {setup} update (micro-batch {scaling['micro_batch_size']}, "
                            f"log-prob chunk {scaling['logprob_chunk_tokens']} tokens)")
        for col in ("layers", "completion", "tokens per pass", "peak memory"):
            table.add_column(col, justify="right")
        for p in points:
            table.add_row(str(p["layers"]), str(p["completion_len"]), str(p["tokens"]), human_bytes(p["bytes"]))
        print_table(console, table)
        fit = (scaling.get("fit") or {}).get(setup)
        if not fit:
            continue
        print_text(console, f"fit: {human_bytes(fit['bytes_fixed'])} fixed + "
                            f"{human_bytes(fit['bytes_per_layer'])} per layer "
                            f"+ {fit['bytes_per_token'] / 1024:.1f} KiB per token "
                            f"+ {fit['bytes_per_token_per_layer'] / 1024:.1f} KiB per token per layer "
                            + (f"+ {fit['bytes_per_logprob_chunk_token'] / 1024:.1f} KiB per completion token "
                               f"up to one log-prob chunk " if fit.get("bytes_per_logprob_chunk_token") else "")
                            + f"(largest residual {human_bytes(fit['max_abs_residual_bytes'])})")
        if fit.get("predicted_bytes"):
            predicted = ", ".join(f"{t} tokens: {human_bytes(b)}" for t, b in fit["predicted_bytes"].items())
            print_text(console, f"predicted at the real depth ({fit['real_layers']} layers): {predicted}")
