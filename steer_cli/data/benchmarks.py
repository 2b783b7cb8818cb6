"""The evaluation benchmarks: where each one lives (local layout and hub), how its rows read,
and the paper's protocol for it (samples per problem, reported metric)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from steer_cli.data.files import SUPPORTED_SUFFIXES, is_data_file_name, locate_data_file, read_rows, source_name
from steer_cli.data.records import FieldMap, Problem, guess_fields, rows_to_problems
from steer_cli.errors import SteerError


@dataclass(frozen=True)
class HubSource:
    """A ``datasets.load_dataset`` call; several configs are concatenated in order."""

    path: str
    split: str
    fields: FieldMap
    configs: tuple[str | None, ...] = (None,)


@dataclass(frozen=True)
class Benchmark:
    name: str
    display_name: str
    hub: HubSource
    local_fields: FieldMap  # for <data_dir>/<name>/test.jsonl
    samples: int  # samples per problem in the paper's protocol
    metric: str
    aliases: tuple[str, ...] = ()


def _bench(name: str, display: str, hub: HubSource, local: FieldMap, samples: int,
           aliases: tuple[str, ...] = ()) -> Benchmark:
    metric = f"avg@{samples}" if samples > 1 else "pass@1"
    return Benchmark(name, display, hub, local, samples, metric, aliases)


# Hub sources follow the reference implementation's eval code; local fields follow the
# <name>/test.jsonl files of the common evaluation layout.
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        _bench(
            "aime25", "AIME25",
            HubSource("opencompass/AIME2025", "test", FieldMap("question", "answer"),
                      configs=("AIME2025-I", "AIME2025-II")),
            FieldMap("problem", "answer", id="id"),
            samples=32, aliases=("aime2025", "aime-25", "aime_25"),
        ),
        _bench(
            "aime24", "AIME24",
            HubSource("Maxwell-Jia/AIME_2024", "train", FieldMap("Problem", "Answer", id="ID")),
            FieldMap("problem", "answer", id="id"),
            samples=32, aliases=("aime2024", "aime-24", "aime_24"),
        ),
        _bench(
            "amc23", "AMC23",
            HubSource("knoveleng/AMC-23", "train", FieldMap("problem", "answer", id="id")),
            FieldMap("problem", "answer", id="id"),
            samples=32, aliases=("amc2023", "amc-23", "amc_23", "amc"),
        ),
        _bench(
            "math500", "MATH500",
            HubSource("HuggingFaceH4/MATH-500", "test", FieldMap("problem", "answer", id="unique_id")),
            FieldMap("problem", "answer", id="unique_id"),
            samples=1, aliases=("math-500", "math_500"),
        ),
        _bench(
            "minerva_math", "MinervaMath",
            HubSource("knoveleng/Minerva-Math", "train",
                      FieldMap("problem", "solution", id="idx", answer_kind="boxed_in")),
            FieldMap("problem", "solution", id="idx", answer_kind="boxed_in"),
            samples=1, aliases=("minerva", "minerva-math", "minervamath"),
        ),
        _bench(
            "olympiadbench", "OlympiadBench",
            HubSource("knoveleng/OlympiadBench", "train", FieldMap("question", "answer", id="id")),
            FieldMap("question", "final_answer", id="id", answer_kind="list"),
            samples=1, aliases=("olympiad", "olympiad_bench", "olympiad-bench"),
        ),
        _bench(
            "gsm8k", "GSM8K",
            HubSource("openai/gsm8k", "test", FieldMap("question", "answer", answer_kind="gsm8k"),
                      configs=("main",)),
            FieldMap("question", "answer", id="idx", answer_kind="gsm8k"),
            samples=1, aliases=("gsm-8k", "gsm_8k"),
        ),
    )
}

# Table 1's column order.
PAPER_BENCHMARKS: tuple[str, ...] = (
    "aime25", "aime24", "amc23", "math500", "minerva_math", "olympiadbench",
)
ALL_BENCHMARKS: tuple[str, ...] = (*PAPER_BENCHMARKS, "gsm8k")


def _lookup_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for b in BENCHMARKS.values():
        for key in (b.name, b.display_name, *b.aliases):
            table[key.lower()] = b.name
    return table


def get_benchmark(name: str) -> Benchmark:
    """The registry entry for one name (case-insensitive; display names and aliases accepted)."""
    return BENCHMARKS[resolve_benchmarks([name])[0]]


def resolve_benchmarks(spec: str | Sequence[str]) -> list[str]:
    """Canonical benchmark names from ``"paper"``, ``"all"`` or comma-separated names, in order,
    without repeats. Entries that look like file paths pass through unchanged."""
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in str(s).split(",")]
    table = _lookup_table()
    names: list[str] = []
    for raw in (p.strip() for p in parts):
        if not raw:
            continue
        key = raw.lower()
        if key == "paper":
            found: Sequence[str] = PAPER_BENCHMARKS
        elif key == "all":
            found = ALL_BENCHMARKS
        elif key in table:
            found = (table[key],)
        elif _is_path_like(raw):  # a local file evaluated as a benchmark; load_benchmark reads it
            found = (raw,)
        else:
            raise SteerError(_unknown_message(raw, table))
        names.extend(n for n in found if n not in names)
    if not names:
        raise SteerError(
            f"no benchmarks given; use 'paper', 'all' or names from: {', '.join(ALL_BENCHMARKS)}"
        )
    return names


def _unknown_message(raw: str, table: dict[str, str]) -> str:
    close = difflib.get_close_matches(raw.lower(), [*table, "paper", "all"], n=1, cutoff=0.6)
    hint = f"did you mean {table.get(close[0], close[0])!r}? " if close else ""
    return (f"unknown benchmark {raw!r}; {hint}known: {', '.join(ALL_BENCHMARKS)} "
            "(or 'paper' for the paper's six, 'all', or a path to a .jsonl/.json/.parquet file)")


def _is_path_like(name: str) -> bool:
    return is_data_file_name(name) or "/" in name or "\\" in name or Path(name).exists()


def load_benchmark(
    name: str | Path,
    data_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    fields: FieldMap | None = None,
) -> list[Problem]:
    """Every problem of a benchmark, each with a non-empty answer (any bad row is an error).

    ``name`` is a registry name (read from ``data_dir/<name>/test.jsonl`` and friends when
    ``data_dir`` is given, else from the hub) or a path to a data file or directory.
    """
    if limit is not None and limit < 1:
        raise SteerError(f"limit must be a positive number of problems, got {limit}")
    text = str(name)
    if isinstance(name, Path) or (text.lower() not in _lookup_table() and _is_path_like(text)):
        problems = _load_path(Path(name), fields)
    else:
        bench = get_benchmark(text)
        if data_dir is not None:
            path = _local_benchmark_file(bench, Path(data_dir))
            problems = _convert(read_rows(path), fields or bench.local_fields, source=bench.name,
                                where=str(path))
        else:
            problems = _convert(_hub_rows(bench.hub, bench.name), fields or bench.hub.fields,
                                source=bench.name, where=bench.hub.path)
    return problems if limit is None else problems[:limit]


def local_benchmark_candidates(name: str, data_dir: str | Path) -> list[Path]:
    """The paths tried, in order, for benchmark ``name`` under ``data_dir``."""
    data_dir = Path(data_dir)
    return ([data_dir / name / f"test{s}" for s in SUPPORTED_SUFFIXES]
            + [data_dir / f"{name}{s}" for s in SUPPORTED_SUFFIXES])


def _local_benchmark_file(bench: Benchmark, data_dir: Path) -> Path:
    if not data_dir.is_dir():
        raise SteerError(f"data directory {data_dir} does not exist; pass an existing --data-dir "
                         f"(holding <benchmark>/test.jsonl) or leave it out to load from the hub")
    candidates = local_benchmark_candidates(bench.name, data_dir)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise SteerError(f"no file for benchmark {bench.name} in {data_dir}; looked for {looked}; "
                     f"add one of them or leave out --data-dir to load {bench.hub.path} from the hub")


def _load_path(path: Path, fields: FieldMap | None) -> list[Problem]:
    path = locate_data_file(path, "test", what="benchmark file",
                            missing=f"benchmark file {path} does not exist; give a benchmark name "
                                    f"({', '.join(ALL_BENCHMARKS)}) or an existing .jsonl/.json/.parquet file")
    rows = read_rows(path)
    source = source_name(path, "test")
    return _convert(rows, fields or guess_fields(rows, source=str(path)), source=source,
                    where=str(path))


def _convert(rows: list[dict[str, Any]], fields: FieldMap, *, source: str, where: str) -> list[Problem]:
    if not rows:
        raise SteerError(f"{where} holds no rows; a benchmark needs at least one problem")
    problems, _ = rows_to_problems(rows, fields, source=source, strict=True)
    return problems


def _hub_rows(hub: HubSource, name: str) -> list[dict[str, Any]]:
    """Rows from the Hugging Face Hub (needs network access or a filled datasets cache)."""
    rows: list[dict[str, Any]] = []
    for config in hub.configs:
        label = hub.path + (f" ({config})" if config else "")
        try:
            ds = datasets.load_dataset(hub.path, config, split=hub.split)
        except Exception as err:  # offline, missing auth, renamed dataset: all end the same way
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise SteerError(
                f"could not load benchmark {name} from the hub {label}, split {hub.split}: {first}; "
                f"pass --data-dir DIR holding {name}/test.jsonl to use a local copy"
            ) from None
        rows.extend(dict(row) for row in ds)
    return rows
