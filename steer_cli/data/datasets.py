"""Training sets: named ones (DeepScaleR, GSM8K, MATH), local files, or any hub dataset id."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from steer_cli.data.files import SUPPORTED_SUFFIXES, is_data_file_name, locate_data_file, read_rows, source_name
from steer_cli.data.records import FieldMap, Problem, columns_of, guess_fields, rows_to_problems
from steer_cli import demo
from steer_cli.errors import SteerError


@dataclass(frozen=True)
class TrainSet:
    name: str
    hub_id: str
    config: str | None
    split: str
    fields: FieldMap


TRAIN_SETS: dict[str, TrainSet] = {
    t.name: t
    for t in (
        # The fact sheet spells it agentica-org/deep_scale_r-preview-dataset; this is the hub's id.
        TrainSet("deepscaler", "agentica-org/DeepScaleR-Preview-Dataset", None, "train",
                 FieldMap("problem", "answer")),
        TrainSet("gsm8k", "openai/gsm8k", "main", "train",
                 FieldMap("question", "answer", answer_kind="gsm8k")),
        TrainSet("math", "DigitalLearningGmbH/MATH-lighteval", None, "train",
                 FieldMap("problem", "solution", answer_kind="boxed_in")),
    )
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_train_set(
    name_or_path: str | Path,
    *,
    data_dir: str | Path | None = None,
    fields: FieldMap | None = None,
    split: str = "train",
    limit: int | None = None,
) -> tuple[list[Problem], int]:
    """Training problems in source order, and how many rows were skipped as unusable.

    A known name reads ``data_dir/<name>/<split>.jsonl`` (or .json/.parquet) when that exists,
    else the hub; a file or directory path is read locally; ``owner/name`` goes to the hub.
    """
    if limit is not None and limit < 1:
        raise SteerError(f"limit must be a positive number of problems, got {limit}")
    text = str(name_or_path)
    key = text.lower()
    if key == "demo" and not isinstance(name_or_path, Path):
        name_or_path = demo.DEMO_DATA_DIR / f"{split}.jsonl"
        text = str(name_or_path)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise SteerError(
            f"data directory {data_dir} does not exist; pass an existing --data-dir or leave it out"
        )

    if not isinstance(name_or_path, Path) and key in TRAIN_SETS:
        spec = TRAIN_SETS[key]
        local = _local_named_file(spec.name, Path(data_dir), split) if data_dir is not None else None
        if local is not None:
            rows = read_rows(local)
            use = (fields or _fields_if_present(spec.fields, rows)
                   or guess_fields(rows, source=str(local)))
            result = _convert(rows, use, source=spec.name, where=str(local))
        else:
            rows = _hub_rows(spec.hub_id, spec.config, split if split != "train" else spec.split)
            result = _convert(rows, fields or spec.fields, source=spec.name, where=spec.hub_id)
    elif isinstance(name_or_path, Path) or is_data_file_name(text) or Path(text).exists():
        result = _load_local(Path(name_or_path), fields, split)
    elif _HUB_ID.match(text):
        rows = _hub_rows(text, None, split)
        result = _convert(rows, fields or guess_fields(rows, source=text), source=text, where=text)
    else:
        close = difflib.get_close_matches(key, list(TRAIN_SETS), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SteerError(
            f"unknown training set {text!r}; {hint}use one of {', '.join(TRAIN_SETS)}, "
            "a path to a .jsonl/.json/.parquet file or directory, or a hub id like owner/name"
        )
    problems, skipped = result
    return (problems if limit is None else problems[:limit]), skipped


def _local_named_file(name: str, data_dir: Path, split: str) -> Path | None:
    for path in [data_dir / name / f"{split}{s}" for s in SUPPORTED_SUFFIXES]:
        if path.is_file():
            return path
    return None


def _fields_if_present(fields: FieldMap, rows: list[dict[str, Any]]) -> FieldMap | None:
    columns = columns_of(rows)
    return fields if fields.problem in columns and fields.answer in columns else None


def _load_local(path: Path, fields: FieldMap | None, split: str) -> tuple[list[Problem], int]:
    path = locate_data_file(path, split, what=f"{split} data file",
                            missing=f"training data file {path} does not exist; check the path, or give "
                                    f"one of {', '.join(TRAIN_SETS)} or a hub id like owner/name")
    rows = read_rows(path)
    if not rows:
        raise SteerError(f"{path} holds no rows: no usable training problems; point --dataset at a non-empty file")
    source = source_name(path, split)
    return _convert(rows, fields or guess_fields(rows, source=str(path)), source=source, where=str(path))


def _convert(
    rows: list[dict[str, Any]], fields: FieldMap, *, source: str, where: str
) -> tuple[list[Problem], int]:
    problems, skipped = rows_to_problems(rows, fields, source=source)
    if not problems:
        raise SteerError(
            f"{where}: no usable training problems in {len(rows)} rows read; expected fields "
            f"[{fields.describe()}], found columns: {', '.join(columns_of(rows)) or 'none'}"
        )
    return problems, skipped


def _hub_rows(hub_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a hub dataset (needs network access or a filled datasets cache)."""
    label = hub_id + (f" ({config})" if config else "")
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as err:  # offline, missing auth, unknown id or split: all end the same way
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SteerError(
            f"could not load training set {label}, split {split}, from the hub: {first}; "
            "give a local .jsonl/.json/.parquet file instead, or --data-dir with <name>/train.jsonl"
        ) from None
    return [dict(row) for row in ds]
