"""The benchmarks of one evaluation: registry names, the demo split, or files; loaded once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from steer_cli import demo
from steer_cli.data.benchmarks import BENCHMARKS, Benchmark, HubSource, load_benchmark, resolve_benchmarks
from steer_cli.data.records import FieldMap, Problem
from steer_cli.errors import SteerError
from steer_cli.settings import Settings

# The demo's held-out split (steer_cli/demo/data/test.jsonl); not in "paper" or "all".
DEMO_BENCHMARK = Benchmark(
    "demo", "Demo", HubSource("steer-cli (built-in demo)", "test", FieldMap("problem", "answer")),
    FieldMap("problem", "answer"), samples=1, metric="pass@1",
)


@dataclass
class BenchmarkData:
    name: str  # key in summary.json and file name (<name>.jsonl)
    display: str
    default_samples: int
    problems: list[Problem]


def resolve_eval_benchmarks(spec: Sequence[str]) -> list[str]:
    """Registry names (``paper``/``all`` expanded), ``demo``, and file paths, in order, no repeats."""
    names: list[str] = []
    for raw in (p.strip() for s in spec for p in str(s).split(",")):
        if not raw:
            continue
        found = ["demo"] if raw.lower() == "demo" else resolve_benchmarks([raw])
        names.extend(n for n in found if n not in names)
    if not names:
        raise SteerError("no benchmarks given; use --benchmarks paper, all, or names such as aime24,gsm8k")
    return names


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("._") or "benchmark"


def load_eval_benchmark(name: str, *, data_dir: Optional[str], limit: Optional[int],
                        fields: Optional[FieldMap] = None) -> BenchmarkData:
    if name == "demo":
        path = demo.DEMO_DATA_DIR / "test.jsonl"
        if not path.is_file():
            raise SteerError(f"the demo test split {path} is missing; reinstall steer-cli")
        problems = load_benchmark(path, limit=limit)
        return BenchmarkData("demo", DEMO_BENCHMARK.display_name, DEMO_BENCHMARK.samples, problems)
    if name in BENCHMARKS:
        bench = BENCHMARKS[name]
        problems = load_benchmark(name, data_dir, limit=limit)
        return BenchmarkData(name, bench.display_name, bench.samples, problems)
    path = Path(name)
    problems = load_benchmark(path, limit=limit, fields=fields)
    stem = path.stem if path.stem not in ("test", "train") else path.parent.name
    return BenchmarkData(_slug(stem), stem, 1, problems)


def load_benchmarks(settings: Settings, fields: Optional[FieldMap] = None) -> list[BenchmarkData]:
    names = resolve_eval_benchmarks(settings.eval.benchmarks)
    data_dir = settings.eval.data_dir
    if data_dir is not None and not Path(data_dir).is_dir():
        raise SteerError(f"data directory {data_dir} does not exist; pass an existing --data-dir "
                         "(holding <benchmark>/test.jsonl) or leave it out to load from the hub")
    out = [load_eval_benchmark(n, data_dir=data_dir, limit=settings.eval.limit, fields=fields) for n in names]
    seen: dict[str, str] = {}
    for b, raw in zip(out, names):
        if b.name in seen:
            raise SteerError(f"benchmarks {seen[b.name]} and {raw} would share the output file {b.name}.jsonl; "
                             "rename one of the files")
        seen[b.name] = raw
    return out
