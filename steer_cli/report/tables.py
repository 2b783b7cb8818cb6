"""The paper's tables from collected results, rendered through tabulate (github, latex) or csv.

- Table 1 form: accuracy per benchmark + Avg for each model x setup, mean ± std over eval seeds, x100.
- Table 4 form: Train / Test pairs, setups as rows, models as columns, difference to Full-Tune.
- Table 3 form: resource cost per setup from `steer bench --json` files.
- Training runs: one row per metrics.jsonl (so `steer report` says something right after `steer train`).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tabulate import tabulate

from steer_cli.data.benchmarks import ALL_BENCHMARKS, PAPER_BENCHMARKS
from steer_cli.models import KNOWN_MODELS, model_slug
from steer_cli.patching.strength import format_layers, format_scale

SETUP_LABELS = {"base": "Base", "steering": "Steering", "full": "Full-Tune", "lora": "LoRA"}
TABLE1_SETUPS = ("base", "steering", "full", "lora", "lora-r1")  # the paper's Table 1 row order
TABLE4_SETUPS = ("base", "full", "steering", "lora")  # the paper's Table 4 row order
BENCH_SETUPS = ("full", "lora", "steering")


def setup_label(setup: str) -> str:
    """'Steering', 'LoRA', ...; a LoRA of another rank (``lora-r1``) reads 'LoRA r1'."""
    if setup.startswith("lora-r"):
        return f"LoRA r{setup[len('lora-r'):]}"
    return SETUP_LABELS.get(setup, setup)


DATASET_LABELS = {"deepscaler": "DeepScaleR", "gsm8k": "GSM8K", "math": "MATH", "demo": "demo"}
MISSING = None


@dataclass
class MeanStd:
    """An accuracy cell: fractions shown x100, "mean ± std"."""

    mean: float
    std: Optional[float]
    digits: int = 1

    def text(self, pm: str = "±") -> str:
        m = f"{100 * self.mean:.{self.digits}f}"
        return m if self.std is None else f"{m} {pm} {100 * self.std:.{self.digits}f}"


@dataclass
class WithDelta:
    """A Table 4 cell: value x100 and, for Steering/LoRA, the difference to Full-Tune."""

    value: float
    delta: Optional[float]
    digits: int = 2

    def text(self) -> str:
        v = f"{100 * self.value:.{self.digits}f}"
        return v if self.delta is None else f"{v} ({100 * self.delta:+.{self.digits}f})"


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)
    blank_repeats: int = 0  # leading columns whose repeats are blanked in text formats (Table 4)


# -- helpers -----------------------------------------------------------------------------------
def _model_label(name: str) -> str:
    return model_slug(name)


def _model_order(label: str, first_seen: dict[str, int]) -> tuple[int, int]:
    shorts = [m.short for m in KNOWN_MODELS]
    return (shorts.index(label) if label in shorts else len(shorts), first_seen.get(label, 0))


def _dataset_label(name: Optional[str]) -> Optional[str]:
    if not name:
        return MISSING

    key = str(name).lower()
    if key in DATASET_LABELS:
        return DATASET_LABELS[key]
    return Path(str(name)).stem if ("/" in str(name) and Path(str(name)).suffix) else str(name)


def _bench_order(names: Sequence[str]) -> list[str]:
    known = [b for b in ALL_BENCHMARKS if b in names]
    return known + sorted(n for n in set(names) if n not in ALL_BENCHMARKS)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _pooled(evals: Sequence[Any], bench: str, values: Callable[[Any], dict[str, float]]) -> dict[str, float]:
    """Seed -> value of one benchmark over several summaries: per (what was evaluated, seed) the
    newest summary wins; different things (e.g. training seeds) are averaged per eval seed."""
    newest: dict[tuple[str, str], tuple[float, float]] = {}
    for e in evals:
        b = e.benchmarks.get(bench)
        if b is None:
            continue
        for seed, v in values(b).items():
            key = (e.identity, seed)
            if key not in newest or e.mtime >= newest[key][0]:
                newest[key] = (e.mtime, v)
    per_seed: dict[str, list[float]] = defaultdict(list)
    for (_, seed), (_, v) in newest.items():
        per_seed[seed].append(v)
    return {seed: _mean(vs) for seed, vs in per_seed.items()}


def _fallback_std(evals: Sequence[Any], bench: str) -> Optional[float]:
    stds = [e.benchmarks[bench].std for e in evals if bench in e.benchmarks]
    return stds[0] if len(stds) == 1 and isinstance(stds[0], (int, float)) else None


def _cell(per_seed: dict[str, float], fallback_std: Optional[float] = None) -> Optional[MeanStd]:
    if not per_seed:
        return None
    vals = list(per_seed.values())
    if list(per_seed) == ["*"]:
        return MeanStd(vals[0], fallback_std)
    return MeanStd(_mean(vals), statistics.pstdev(vals))


def _primary(b: Any) -> dict[str, float]:
    return b.seed_values()


# -- Table 1 -----------------------------------------------------------------------------------
def _table1_groups(evals: Sequence[Any]) -> dict[tuple[str, str, Optional[str]], list[Any]]:
    groups: dict[tuple[str, str, Optional[str]], list[Any]] = defaultdict(list)
    for e in evals:
        train = None if e.setup == "base" else e.train_dataset
        groups[(_model_label(e.model), e.setup, train)].append(e)
    return groups


def _sorted_group_keys(groups: dict, evals: Sequence[Any], setup_order: Sequence[str]) -> list:
    first_seen: dict[str, int] = {}
    for i, e in enumerate(evals):
        first_seen.setdefault(_model_label(e.model), i)

    def key(k: tuple[str, str, Optional[str]]) -> tuple:
        model, setup, train = k
        s = setup_order.index(setup) if setup in setup_order else len(setup_order)
        return (_model_order(model, first_seen), model, str(train or ""), s, setup)

    return sorted(groups, key=key)


def _as_trained(evals: Sequence[Any]) -> list[Any]:
    """Summaries at scale 1 on every steered layer: the paper's tables hold only those."""
    return [e for e in evals if getattr(e, "as_trained", True)]


def table1(results: Any) -> Optional[Table]:
    evals = _as_trained(results.evals)
    if not evals:
        return None
    groups = _table1_groups(evals)
    keys = _sorted_group_keys(groups, evals, TABLE1_SETUPS)
    benches = _bench_order([b for e in evals for b in e.benchmarks])
    display = {b: next(e.benchmarks[b].display for e in evals if b in e.benchmarks) for b in benches}
    row_benches = {k: {b for e in groups[k] for b in e.benchmarks} for k in keys}
    notes = []
    if any(set(PAPER_BENCHMARKS) <= have for have in row_benches.values()):
        avg_over = list(PAPER_BENCHMARKS)  # the paper's Avg.: its six benchmarks
    else:
        common = set.intersection(*row_benches.values())
        avg_over = [b for b in benches if b in common] if len(common) >= 2 else []
        if avg_over and len(avg_over) < len(benches):
            notes.append("Avg. over " + ", ".join(display[b] for b in avg_over))
    show_train = len({k[2] for k in keys if k[1] != "base"}) > 1
    headers = ["Model", "Setup"] + (["Train"] if show_train else []) + [display[b] for b in benches]
    headers += ["Avg."] if avg_over else []
    rows = []
    for k in keys:
        model, setup, train = k
        members = groups[k]
        row: list[Any] = [model, setup_label(setup)]
        if show_train:
            row.append(_dataset_label(train) if setup != "base" and train else MISSING)
        per_bench = {b: _pooled(members, b, _primary) for b in benches}
        row += [_cell(per_bench[b], _fallback_std(members, b)) for b in benches]
        if avg_over:
            row.append(_average(per_bench, avg_over) if set(avg_over) <= row_benches[k] else MISSING)
        rows.append(row)
    metrics = sorted({f"{display[b]}: {e.benchmarks[b].metric}" for e in evals for b in e.benchmarks
                      if e.benchmarks[b].metric != "pass@1"})
    if metrics:
        notes.append("pass@1 except " + "; ".join(metrics))
    return Table("Table 1 form: accuracy (%), mean ± std over evaluation seeds", headers, rows, notes)


def _average(per_bench: dict[str, dict[str, float]], over: Sequence[str]) -> Optional[MeanStd]:
    """The paper's Avg.: per seed the mean over benchmarks, then mean ± std over seeds."""
    seed_sets = [set(per_bench[b]) for b in over]
    if not all(seed_sets):
        return None
    common = set.intersection(*seed_sets) - {"*"}
    if common:
        per_seed = [_mean([per_bench[b][s] for b in over]) for s in sorted(common)]
        return MeanStd(_mean(per_seed), statistics.pstdev(per_seed))
    return MeanStd(_mean([_mean(list(per_bench[b].values())) for b in over]), None)


# -- Table 4 -----------------------------------------------------------------------------------
def _mean_at_k(b: Any) -> dict[str, float]:
    """mean@k where the summary has it (the paper's Table 4 metric), else the primary metric."""
    for values in b.per_seed.values():
        key = next((m for m in values if m.startswith("mean@")), None)
        if key is not None:
            return b.seed_values(key) or b.seed_values()
    return b.seed_values()


def table4(results: Any) -> Optional[Table]:
    evals = _as_trained(results.evals)
    trained = [e for e in evals if e.setup != "base" and e.train_dataset]
    if not trained:
        return None
    first_seen: dict[str, int] = {}
    for i, e in enumerate(evals):
        first_seen.setdefault(_model_label(e.model), i)
    models = sorted({_model_label(e.model) for e in trained}, key=lambda m: _model_order(m, first_seen))
    trains = list(dict.fromkeys(str(e.train_dataset) for e in trained))
    pairs = []
    for t in trains:
        tests = _bench_order([b for e in trained if str(e.train_dataset) == t for b in e.benchmarks])
        in_domain = [b for b in tests if b == str(t).lower()]  # GSM8K / GSM8K before GSM8K / MATH, as in the paper
        pairs += [(t, b) for b in in_domain + [b for b in tests if b not in in_domain]]
    # a model's column is filled for a pair only where it was trained on that pair's dataset
    has_pair = {(_model_label(e.model), str(e.train_dataset), b) for e in trained for b in e.benchmarks}

    def value(model: str, setup: str, train: str, bench: str) -> Optional[float]:
        members = [e for e in evals if _model_label(e.model) == model and e.setup == setup
                   and (setup == "base" or str(e.train_dataset) == train)]
        per_seed = _pooled(members, bench, _mean_at_k)
        return _mean(list(per_seed.values())) if per_seed else None

    display = {b: next(e.benchmarks[b].display for e in evals if b in e.benchmarks) for _, b in pairs}
    setups = [*TABLE4_SETUPS, *sorted({e.setup for e in trained} - set(TABLE4_SETUPS))]  # other ranks last
    rows = []
    for train, bench in pairs:
        full = {m: value(m, "full", train, bench) for m in models}
        for setup in setups:
            cells: list[Any] = []
            for m in models:
                v = value(m, setup, train, bench) if (m, train, bench) in has_pair else None
                delta = v - full[m] if (v is not None and full[m] is not None and setup not in ("base", "full")) else None
                cells.append(WithDelta(v, delta) if v is not None else MISSING)
            if any(c is not None for c in cells):
                rows.append([f"{_dataset_label(train)} / {display[bench]}", setup_label(setup), *cells])
    if not rows:
        return None
    return Table("Table 4 form: accuracy (%, mean@k where recorded) per train / test pair; "
                 "(±x) = difference to Full-Tune", ["Train / Test", "Setup", *models], rows, blank_repeats=1)


# -- Table 3 -----------------------------------------------------------------------------------
def human_count(n: Optional[float]) -> Optional[str]:
    if n is None:
        return None
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g}"


def human_bytes(n: Optional[float]) -> Optional[str]:
    if n is None:
        return None
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g} B"


def human_seconds(t: Optional[float]) -> Optional[str]:
    if t is None:
        return None
    if t >= 100:
        return f"{t:.0f} s"
    if t >= 0.01:
        return f"{t:.3g} s"
    return f"{t * 1000:.3g} ms"


def table3(results: Any) -> list[Table]:
    tables = []
    for bench in results.benches:
        data = bench.data
        setups_data = data.get("setups") or {}
        setups = [s for s in BENCH_SETUPS if s in setups_data] + sorted(s for s in setups_data if s not in BENCH_SETUPS)
        if not setups:
            continue

        def row(label: str, key: str, fmt: Callable[[Optional[float]], Optional[str]]) -> list[Any]:
            return [label, *(fmt(setups_data[s].get(key)) for s in setups)]

        rows = [row("Number of Parameters", "trainable_params", human_count),
                row("Optimizer Memory", "optimizer_state_bytes", human_bytes),
                row("Per-step Time", "update_step_seconds", human_seconds)]
        if any(setups_data[s].get("peak_memory_bytes") is not None for s in setups):
            rows.append(row("Peak Memory", "peak_memory_bytes", human_bytes))
        machine = data.get("machine") or {}
        where = machine.get("gpu") or machine.get("cpu") or "unknown machine"
        tables.append(Table(f"Table 3 form: resource cost, {data.get('model', '?')} on {where} ({bench.path.name})",
                            ["Metric", *(setup_label(s) for s in setups)], rows, _bench_notes(data)))
    return tables


def _bench_notes(data: dict[str, Any]) -> list[str]:
    notes = []
    if isinstance(data.get("forward_seconds"), (int, float)):
        notes.append(f"forward pass: {human_seconds(data['forward_seconds'])}")
    for backend, g in (data.get("generation") or {}).items():
        if isinstance(g, dict) and g:
            bare, steered = g.get("tokens_per_second_bare"), g.get("tokens_per_second_steered")
            if isinstance(bare, (int, float)) and isinstance(steered, (int, float)):
                notes.append(f"{backend} generation: {bare:.1f} tokens/s bare, {steered:.1f} steered")
    sync = data.get("vllm_sync")
    if isinstance(sync, dict) and all(isinstance(sync.get(k), (int, float))
                                      for k in ("vector_sync_seconds", "full_reload_seconds")):
        notes.append(f"vLLM weight update: vectors {human_seconds(sync['vector_sync_seconds'])}, "
                     f"full reload {human_seconds(sync['full_reload_seconds'])}")
    return notes


# -- training runs -----------------------------------------------------------------------------
def _window_mean(rows: Sequence[dict[str, Any]], key: str) -> Optional[float]:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return _mean(vals) if vals else None


def training_table(results: Any) -> Optional[Table]:
    runs = [r for r in results.runs]
    if not runs:
        return None
    rows = []
    for r in runs:
        m = r.metrics
        w = max(1, min(10, len(m) // 5))
        first, last = m[:w], m[-w:]
        start, end = _window_mean(first, "reward_mean"), _window_mean(last, "reward_mean")
        acc = _window_mean(last, "accuracy")
        length = _window_mean(last, "completion_len_mean")
        norms = last[-1].get("vector_norms") if last else None
        norm = _mean(norms) if isinstance(norms, list) and norms else None
        rows.append([
            r.label, _model_label(r.model) if r.model else MISSING, _dataset_label(r.dataset),
            setup_label(r.setup) if r.setup else MISSING, MISSING if r.seed is None else str(r.seed),
            str(m[-1].get("step", len(m))) if m else "0",
            f"{start:.3f} → {end:.3f}" if start is not None and end is not None else None,
            f"{100 * acc:.1f}" if acc is not None else None,
            f"{length:.0f}" if length is not None else None,
            f"{norm:.4g}" if norm is not None else None,
        ])
    return Table("Training runs (reward: mean of the first → last steps, up to 10 each; accuracy and length: last steps)",
                 ["Run", "Model", "Dataset", "Setup", "Seed", "Steps", "Reward", "Accuracy (%)", "Length",
                  "Mean vector norm"], rows)


# -- steering strength ----------------------------------------------------------------------------
def _sweeps(results: Any) -> list[tuple[str, list[Any]]]:
    """(label, summaries) of every thing evaluated at several strengths or on a layer subset
    (``steer eval --scale ... --layers ...``), in the order first seen; base models excluded."""
    groups: dict[str, list[Any]] = {}
    for e in results.evals:
        if e.setup != "base" and getattr(e, "sweep", ""):
            groups.setdefault(e.sweep, []).append(e)
    out = []
    for members in groups.values():
        if all(e.as_trained for e in members):
            continue
        first = members[0]
        where = first.identity.split("|")[0]
        checkpoint = first.identity.split("|")[1]
        label = " · ".join(x for x in (_model_label(first.model), setup_label(first.setup),
                                       where.rstrip("/").rsplit("/", 1)[-1] if where else "",
                                       checkpoint if checkpoint not in ("None", "") else "") if x)
        if first.layers is not None:
            label += f" · layers {format_layers(first.layers)}"
        out.append((label, members))
    return out


def scale_tables(results: Any) -> list[Table]:
    """Accuracy against steering scale: one table per swept thing, benchmarks as rows, scales as
    columns (mean ± std over evaluation seeds), the Average when there are several benchmarks."""
    tables = []
    for label, members in _sweeps(results):
        scales = sorted({e.scale for e in members})
        at = {sc: [e for e in members if e.scale == sc] for sc in scales}
        benches = _bench_order([b for e in members for b in e.benchmarks])
        display = {b: next(e.benchmarks[b].display for e in members if b in e.benchmarks) for b in benches}
        per = {sc: {b: _pooled(at[sc], b, _primary) for b in benches} for sc in scales}
        rows: list[list[Any]] = []
        for b in benches:
            metric = next(e.benchmarks[b].metric for e in members if b in e.benchmarks)
            rows.append([display[b], metric, *(_cell(per[sc][b], _fallback_std(at[sc], b)) for sc in scales)])
        if len(benches) > 1:
            rows.append(["Average", "", *(_average(per[sc], benches) for sc in scales)])
        tables.append(Table(f"Accuracy (%) against steering scale: {label}",
                            ["Benchmark", "Metric", *(f"x{format_scale(sc)}" for sc in scales)], rows,
                            ["scale 0 = the base model under the trained protocol; x1 = the vectors as trained"]))
    return tables


def scale_series(results: Any) -> list[tuple[str, list[float], list[Optional[float]], list[Optional[float]]]]:
    """(label, scales, means x100, stds x100) per swept thing and benchmark, for the plot."""
    out = []
    for table, (label, _) in zip(scale_tables(results), _sweeps(results)):
        scales = [float(h[1:]) for h in table.headers[2:]]
        for row in table.rows:
            cells = row[2:]
            out.append((f"{label} · {row[0]}", scales, [100 * c.mean if c else None for c in cells],
                        [100 * c.std if c and c.std is not None else None for c in cells]))
    return out


def build_tables(results: Any) -> list[Table]:
    tables = [table1(results), table4(results), *scale_tables(results), *table3(results), training_table(results)]
    return [t for t in tables if t is not None]


# -- plots' data -------------------------------------------------------------------------------
def accuracy_series(results: Any) -> Optional[tuple[list[str], list[tuple[str, list, list]]]]:
    """Benchmarks and one (label, means x100, stds x100) series per Table 1 row."""
    t = table1(results)
    if t is None:
        return None
    first_bench = 3 if "Train" in t.headers else 2
    benchmarks = t.headers[first_bench:]
    series = []
    for row in t.rows:
        label = " · ".join(str(x) for x in row[:first_bench] if x)
        cells = row[first_bench:]
        series.append((label, [100 * c.mean if c else None for c in cells],
                       [100 * c.std if c and c.std is not None else None for c in cells]))
    return benchmarks, series


# -- rendering ---------------------------------------------------------------------------------
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text).replace("—", "--").replace("→", r"$\to$")


def _text_cell(cell: Any, fmt: str) -> str:
    if cell is None:
        return "--" if fmt == "latex" else "—"
    if isinstance(cell, MeanStd):
        return cell.text(r"$\pm$" if fmt == "latex" else "±")
    if isinstance(cell, WithDelta):
        return cell.text()
    return _latex_escape(str(cell)) if fmt == "latex" else str(cell)


def _blank_repeats(rows: list[list[str]], n: int) -> list[list[str]]:
    out, prev = [], None
    for row in rows:
        lead = tuple(row[:n])
        out.append([""] * n + row[n:] if lead == prev else row)
        prev = lead
    return out


def render_table(table: Table, fmt: str) -> str:
    if fmt == "csv":
        return _render_csv(table)
    rows = [[_text_cell(c, fmt) for c in row] for row in table.rows]
    if table.blank_repeats:
        rows = _blank_repeats(rows, table.blank_repeats)
    if fmt == "latex":
        headers = [_latex_escape(h) for h in table.headers]
        body = tabulate(rows, headers, tablefmt="latex_raw", disable_numparse=True)
        lines = [f"% {table.title}", body, *(f"% {n}" for n in table.notes)]
    else:
        body = tabulate(rows, table.headers, tablefmt="github", disable_numparse=True)
        lines = [table.title, "", body, *([""] + table.notes if table.notes else [])]
    return "\n".join(lines)


def _render_csv(table: Table) -> str:
    """Numbers as numbers: "mean ± std" cells become two columns (x100, rounded like the text)."""
    split_std = [any(isinstance(r[i], MeanStd) for r in table.rows) for i in range(len(table.headers))]
    split_delta = [any(isinstance(r[i], WithDelta) for r in table.rows) for i in range(len(table.headers))]
    headers: list[str] = []
    for h, s, d in zip(table.headers, split_std, split_delta):
        headers += [h, f"{h} std"] if s else [h, f"{h} vs Full-Tune"] if d else [h]
    out = io.StringIO()
    out.write(f"# {table.title}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    for row in table.rows:
        cells: list[str] = []
        for c, s, d in zip(row, split_std, split_delta):
            if s:
                cells += ["", ""] if c is None else [f"{100 * c.mean:.{c.digits + 1}f}",
                                                     "" if c.std is None else f"{100 * c.std:.{c.digits + 1}f}"]
            elif d:
                cells += ["", ""] if c is None else [f"{100 * c.value:.{c.digits}f}",
                                                     "" if c.delta is None else f"{100 * c.delta:+.{c.digits}f}"]
            else:
                cells.append("" if c is None else str(c))
        writer.writerow(cells)
    for n in table.notes:
        out.write(f"# {n}\n")
    return out.getvalue().rstrip("\n")


def render_tables(tables: Sequence[Table], fmt: str) -> str:
    return "\n\n".join(render_table(t, fmt) for t in tables) + "\n"
