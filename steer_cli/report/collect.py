"""Collecting results for `steer report`: find eval summaries, training runs and bench files under
directories and parse them (the tables are in ``report.tables``, the figures in ``report.plots``).

What is read (formats in notes/apis.md and the modules that write them):
    summary.json         eval output ("kind": "steer-eval")
    metrics.jsonl        training run, with settings.yaml beside it
    *.json               bench output ("kind": "steer-bench")
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from steer_cli.data.benchmarks import BENCHMARKS
from steer_cli.errors import SteerError
from steer_cli.settings import LoraSettings

# Files that are never bench JSON; skipped without being parsed (tokenizer.json can be MBs).
_NOT_BENCH = {"summary.json", "config.json", "tokenizer.json", "tokenizer_config.json", "trainer_state.json",
              "generation_config.json", "special_tokens_map.json", "adapter_config.json", "vocab.json",
              "added_tokens.json", "preprocessor_config.json"}
_MAX_BENCH_BYTES = 1 << 20


@dataclass
class BenchScores:
    """One benchmark of one eval summary."""

    name: str
    display: str
    metric: str  # the primary metric, e.g. avg@32 or pass@1
    per_seed: dict[str, dict[str, float]]
    mean: Optional[float]
    std: Optional[float]

    def seed_values(self, metric: Optional[str] = None) -> dict[str, float]:
        """Seed -> value of ``metric`` (default: the primary one); the summary's mean as a
        single pseudo-seed "*" when it has no per-seed numbers."""
        metric = metric or self.metric
        out = {}
        for seed, values in self.per_seed.items():
            v = metric_value(values, metric)
            if v is not None:
                out[str(seed)] = v
        if not out and metric == self.metric and self.mean is not None:
            out["*"] = float(self.mean)
        return out


def metric_value(values: dict[str, Any], metric: str) -> Optional[float]:
    """``values[metric]``, also under its generic name (avg@32 -> avg@k)."""
    for key in (metric, re.sub(r"@\d+$", "@k", metric)):
        v = values.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


@dataclass
class EvalSummary:
    path: Path
    model: str
    setup: str
    train_dataset: Optional[str]
    identity: str  # what was evaluated: re-runs of the same thing replace each other per seed
    mtime: float
    benchmarks: dict[str, BenchScores]
    scale: float = 1.0  # steering strength at evaluation (steer eval --scale)
    layers: Optional[tuple[int, ...]] = None  # layer subset at evaluation (--layers); None = all steered
    sweep: str = ""  # the identity without the strength: summaries of one scale sweep share it

    @property
    def as_trained(self) -> bool:
        """Evaluated at scale 1 on every steered layer (what the paper's tables hold)."""
        return self.scale == 1.0 and self.layers is None


@dataclass
class TrainRun:
    path: Path
    label: str
    model: Optional[str]
    dataset: Optional[str]
    setup: Optional[str]
    seed: Optional[int]
    metrics: list[dict[str, Any]]


@dataclass
class BenchFile:
    path: Path
    data: dict[str, Any]


@dataclass
class Results:
    evals: list[EvalSummary] = field(default_factory=list)
    runs: list[TrainRun] = field(default_factory=list)
    benches: list[BenchFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.evals or self.runs or self.benches)


# -- reading -----------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _bench_display(name: str) -> str:
    b = BENCHMARKS.get(name)
    return b.display_name if b else name


def setup_key(setup: str, lora_rank: Any = None) -> str:
    """The setup as reports group it: LoRA of a rank other than the default (4) is its own row, ``lora-r1``."""
    default = LoraSettings.model_fields["rank"].default
    if setup == "lora" and isinstance(lora_rank, int) and lora_rank != default:
        return f"lora-r{lora_rank}"
    return setup


def parse_summary(path: Path) -> EvalSummary:
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("kind") != "steer-eval":
        raise ValueError('not an eval summary ("kind" is not "steer-eval")')
    benches = {}
    for name, b in (data.get("benchmarks") or {}).items():
        if not isinstance(b, dict):
            raise ValueError(f"benchmark {name!r} is not an object")
        per_seed = {str(s): v for s, v in (b.get("per_seed") or {}).items() if isinstance(v, dict)}
        benches[name] = BenchScores(name, b.get("display") or _bench_display(name), str(b.get("metric") or "pass@1"),
                                    per_seed, b.get("mean"), b.get("std"))
    if not data.get("model") or not data.get("setup"):
        raise ValueError("it names no model or setup")
    what = data.get("run") or data.get("vectors") or data.get("adapter") or f"{data['setup']}:{data['model']}"
    scale = data.get("scale", 1.0)
    scale = float(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else 1.0
    layers = data.get("layers")
    layers = tuple(int(i) for i in layers) if isinstance(layers, list) else None
    sweep = f"{what}|{data.get('checkpoint')}|T={data.get('temperature')}|layers={layers}"
    identity = f"{what}|{data.get('checkpoint')}|T={data.get('temperature')}"
    if scale != 1.0 or layers is not None:
        identity += f"|scale={scale}|layers={layers}"
    setup = setup_key(str(data["setup"]), data.get("lora_rank"))
    return EvalSummary(path, str(data["model"]), setup, data.get("train_dataset"), identity,
                       path.stat().st_mtime, benches, scale, layers, sweep)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a torn last line of a killed run
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def parse_train_run(metrics_path: Path, root: Path) -> TrainRun:
    run = metrics_path.parent
    model = dataset = setup = None
    seed = None
    settings_path = run / "settings.yaml"
    if settings_path.exists():
        try:
            s = yaml.safe_load(settings_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            s = {}
        if isinstance(s, dict):
            model = (s.get("model") or {}).get("name")
            dataset = (s.get("data") or {}).get("dataset")
            setup_values = s.get("setup") or {}
            setup = setup_values.get("kind")
            if setup is not None:
                lora = setup_values.get("lora")
                setup = setup_key(str(setup), lora.get("rank") if isinstance(lora, dict) else None)
            seed = (s.get("train") or {}).get("seed")
    try:
        label = str(run.relative_to(root)) if run != root else run.name
    except ValueError:
        label = str(run)
    if label in ("", "."):
        label = run.resolve().name
    return TrainRun(run, label, model, dataset, setup, seed, _read_metrics(metrics_path))


def _walk(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        # hidden directories are atomic-write leftovers (half-written results) and VCS data
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def collect(paths: Sequence[str | Path]) -> Results:
    """Everything reportable under ``paths`` (directories, searched recursively, or files)."""
    results = Results()
    seen: set[Path] = set()
    for raw in paths:
        root = Path(raw).expanduser()
        if not root.exists():
            raise SteerError(f"{root} does not exist; pass directories holding eval or training outputs")
        files = [root] if root.is_file() else list(_walk(root))
        base = root.parent if root.is_file() else root
        for f in files:
            resolved = f.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            _classify(f, base, results, explicit=root.is_file())
    return results


def _classify(f: Path, root: Path, results: Results, *, explicit: bool) -> None:
    try:
        if f.name == "summary.json":
            results.evals.append(parse_summary(f))
        elif f.name == "metrics.jsonl":
            results.runs.append(parse_train_run(f, root))
        elif f.suffix == ".json" and (explicit or (f.name not in _NOT_BENCH and not f.name.endswith(".index.json")
                                                   and f.stat().st_size <= _MAX_BENCH_BYTES)):
            data = _read_json(f)
            if isinstance(data, dict) and data.get("kind") == "steer-bench":
                results.benches.append(BenchFile(f, data))
            elif explicit:
                results.skipped.append(f"{f}: not a summary.json, metrics.jsonl or steer bench JSON")
        elif explicit:
            results.skipped.append(f"{f}: not a summary.json, metrics.jsonl or steer bench JSON")
    except (OSError, ValueError, AttributeError, TypeError) as err:
        results.skipped.append(f"{f}: {err}")
