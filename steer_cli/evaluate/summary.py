"""summary.json of a target (metrics per benchmark and seed, mean ± std, the paper's Average) and
the results table printed at the end."""

from __future__ import annotations

from typing import Any, Sequence

from steer_cli import eval_metrics as M
from steer_cli.evaluate.benchmarks import BenchmarkData
from steer_cli.evaluate.outputs import FORMAT_VERSION, SUMMARY_KIND, abs_path
from steer_cli.evaluate.protocol import Protocol
from steer_cli.evaluate.targets import Target
from steer_cli.settings import Settings


def build_summary(target: Target, settings: Settings, proto: Protocol, benches: Sequence[BenchmarkData],
                  matrices: dict[tuple[str, int], list[list[bool]]]) -> dict[str, Any]:
    """summary.json of one target (format in notes/apis.md)."""
    benchmarks: dict[str, Any] = {}
    primary: dict[str, dict[str, float]] = {}
    for b in benches:
        n = proto.samples(b)
        metric = M.primary_metric(n)
        result = M.benchmark_summary({s: matrices[(b.name, s)] for s in proto.seeds}, metric, proto.mean_k)
        benchmarks[b.name] = {"display": b.display, "metric": metric, "samples": n, "problems": len(b.problems),
                              **result}
        primary[b.name] = {seed: M.primary_value(v, metric) for seed, v in result["per_seed"].items()}
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
    }




def _cell(entry: dict[str, Any], seeds: int) -> str:
    text = f"{100 * entry['mean']:.1f}"
    return text + (f" ± {100 * entry['std']:.1f}" if seeds > 1 else "")


def describe_protocol(summary: dict[str, Any]) -> str:
    if summary["greedy"]:
        return "greedy (T=0: one sample and one seed, decoding is deterministic)"
    seeds = summary["seeds"]
    tail = f"mean ± std over seeds {','.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    return f"T={float(summary['temperature'])}, top_p={float(summary['top_p'])}, {tail}"


def results_table(summaries: Sequence[dict[str, Any]]) -> Any:
    """A rich table (rows = benchmarks + Average, columns = evaluated targets, accuracy x100) and a
    line per target saying how it was sampled."""
    from rich.table import Table

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
    if len(names) > 1:
        table.add_section()
        row = ["Average"] + ([""] if same_metric else [])
        row += [_cell(s["average"], len(s["seeds"])) for s in summaries]
        table.add_row(*row)
    from rich.console import Group
    from rich.text import Text

    notes = [Text(f"{s['label']}: {describe_protocol(s)}", style="dim") for s in summaries]
    return Group(table, *notes)
