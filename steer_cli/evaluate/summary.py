"""summary.json of a target (metrics per benchmark and seed, mean ± std, the paper's Average) and
the results table printed at the end."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text

import steer_cli.evaluate.metrics as M
from steer_cli.evaluate.benchmarks import BenchmarkData
from steer_cli.evaluate.outputs import FORMAT_VERSION, SUMMARY_KIND, abs_path
from steer_cli.evaluate.protocol import Protocol
from steer_cli.evaluate.rewards import reward_summary
from steer_cli.evaluate.targets import Target
from steer_cli.rewards.plugins import parse_reward, reward_sha256
from steer_cli.settings import Settings


def build_summary(target: Target, settings: Settings, proto: Protocol, benches: Sequence[BenchmarkData],
                  matrices: dict[tuple[str, int], list[list[bool]]],
                  rewards: Optional[dict[tuple[str, int], list[Optional[float]]]] = None, *, processes: int = 1,
                  wall_seconds: Optional[float] = None) -> dict[str, Any]:
    """summary.json of one target (format in notes/apis.md); ``rewards`` (``eval.reward``): every
    sample's reward per (benchmark, seed). ``processes`` and ``wall_seconds`` describe the
    invocation that wrote it (a re-run that only merged counts its own time)."""
    benchmarks: dict[str, Any] = {}
    primary: dict[str, dict[str, float]] = {}
    for b in benches:
        n = proto.samples(b)
        metric = M.primary_metric(n)
        result = M.benchmark_summary({s: matrices[(b.name, s)] for s in proto.seeds}, metric, proto.mean_k)
        benchmarks[b.name] = {"display": b.display, "metric": metric, "samples": n, "problems": len(b.problems),
                              **result}
        primary[b.name] = {seed: M.primary_value(v, metric) for seed, v in result["per_seed"].items()}
        if settings.eval.reward is not None and rewards is not None:
            benchmarks[b.name]["reward"] = reward_summary({s: rewards[(b.name, s)] for s in proto.seeds})
    extra: dict[str, Any] = {}
    if settings.eval.reward is not None:
        spec = parse_reward(settings.eval.reward)
        extra["reward"] = {"name": spec.text, "sha256": reward_sha256(spec)}
    return {
        "kind": SUMMARY_KIND, "format_version": FORMAT_VERSION,
        "model": target.model, "setup": target.setup, "lora_rank": target.lora_rank,
        "vectors": abs_path(target.vectors), "adapter": abs_path(target.adapter), "run": abs_path(target.run),
        "checkpoint": target.checkpoint, "train_dataset": target.train_dataset,
        "temperature": proto.temperature, "top_p": proto.top_p, "seeds": list(proto.seeds),
        "benchmarks": benchmarks,
        "average": M.paper_average(primary),
        # Beyond the shared format: the table's column name and the rest of the protocol.
        "label": target.label,
        "weights": abs_path(target.weights),
        "greedy": proto.greedy,
        "max_new_tokens": proto.max_new_tokens, "max_seq_length": proto.max_seq_length,
        "mean_k": proto.mean_k, "backend": settings.rollout.backend,
        "processes": processes,
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 3),
        # steering strength at evaluation (steer eval --scale/--layers); steer report reads them
        "scale": target.scale, "layers": list(target.layers) if target.layers is not None else None,
        **extra,
    }




def _cell(entry: dict[str, Any], seeds: int) -> str:
    text = f"{100 * entry['mean']:.1f}"
    return text + (f" ± {100 * entry['std']:.1f}" if seeds > 1 else "")


def _reward_cell(entry: Optional[dict[str, Any]], seeds: int) -> str:
    if not entry or entry.get("mean") is None:
        return "-"
    text = f"{entry['mean']:.3f}" + (f" ± {entry['std']:.3f}" if seeds > 1 else "")
    return text + (f" ({entry['errors']} failed)" if entry.get("errors") else "")


def describe_protocol(summary: dict[str, Any]) -> str:
    if summary["greedy"]:
        return "greedy (T=0: one sample and one seed, decoding is deterministic)"
    seeds = summary["seeds"]
    tail = f"mean ± std over seeds {','.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    return f"T={float(summary['temperature'])}, top_p={float(summary['top_p'])}, {tail}"


def results_table(summaries: Sequence[dict[str, Any]]) -> Any:
    """A rich table (rows = benchmarks + Average, columns = evaluated targets, accuracy x100) and a
    line per target saying how it was sampled."""
    table = Table(title="steer eval: accuracy (%)")
    table.add_column("Benchmark")
    names: list[str] = []
    for s in summaries:
        names.extend(n for n in s["benchmarks"] if n not in names)
    metrics_per_bench = {n: {s["benchmarks"][n]["metric"] for s in summaries if n in s["benchmarks"]} for n in names}
    same_metric = all(len(v) == 1 for v in metrics_per_bench.values())
    if same_metric:
        table.add_column("Metric")
    for s in summaries:
        table.add_column(s["label"], justify="right")
    for n in names:
        display = next(s["benchmarks"][n]["display"] for s in summaries if n in s["benchmarks"])
        row = [display] + ([next(iter(metrics_per_bench[n]))] if same_metric else [])
        for s in summaries:
            entry = s["benchmarks"].get(n)
            if entry is None:
                row.append("-")
            else:
                cell = _cell(entry, len(s["seeds"]))
                row.append(cell if same_metric else f"{cell} [dim]{entry['metric']}[/dim]")
        table.add_row(*row)
        if any("reward" in s["benchmarks"].get(n, {}) for s in summaries):
            row = [f"  {display}: mean reward"] + ([""] if same_metric else [])
            row += [_reward_cell(s["benchmarks"].get(n, {}).get("reward"), len(s["seeds"])) for s in summaries]
            table.add_row(*row, style="cyan")
    if len(names) > 1:
        table.add_section()
        row = ["Average"] + ([""] if same_metric else [])
        row += [_cell(s["average"], len(s["seeds"])) for s in summaries]
        table.add_row(*row)

    notes = [Text(f"{s['label']}: {describe_protocol(s)}", style="dim") for s in summaries]
    reward = next((s["reward"]["name"] for s in summaries if s.get("reward")), None)
    if reward:
        notes.append(Text(f"mean reward: {reward} (the plug-in's floats; math and exact count 1 or 0)", style="dim"))
    return Group(table, *notes)
