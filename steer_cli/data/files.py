"""Reading rows from local .jsonl / .json / .parquet files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from steer_cli.errors import SteerError

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".parquet")


def is_data_file_name(name: str | Path) -> bool:
    return Path(name).suffix.lower() in SUPPORTED_SUFFIXES


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a data file as dicts, in file order."""
    path = Path(path)
    if not path.is_file():
        raise SteerError(f"data file {path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    raise SteerError(
        f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(SUPPORTED_SUFFIXES)}"
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SteerError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                         "give a .jsonl/.json file or a .parquet file") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SteerError(
                f"{path}, line {lineno}: invalid JSON ({err.msg} at column {err.colno}); "
                "each line of a .jsonl file must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise SteerError(
                f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}; "
                "each line of a .jsonl file must be one JSON object"
            )
        rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict[str, Any]]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines saved under a .json name
            return _read_jsonl(path)
        raise SteerError(
            f"{path}: invalid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "give a list of objects, or use .jsonl with one object per line"
        ) from None
    rows = _rows_from_json(data)
    if rows is None:
        raise SteerError(
            f"{path}: expected a list of objects, an object with one such list (e.g. 'data'), "
            f"or an object of equal-length columns; got {type(data).__name__}"
        )
    return rows


def _rows_from_json(data: Any) -> list[dict[str, Any]] | None:
    if isinstance(data, list):
        return data if all(isinstance(r, dict) for r in data) else None
    if not isinstance(data, dict):
        return None
    lists = [v for v in data.values() if isinstance(v, list)]
    # {"data": [{...}, ...]} (possibly with metadata beside it)
    record_lists = [v for v in lists if v and all(isinstance(r, dict) for r in v)]
    if len(record_lists) == 1:
        return record_lists[0]
    # {"problem": [...], "answer": [...]}: column-oriented, as pandas' to_json(orient="list") writes
    if data and len(lists) == len(data) and len({len(v) for v in lists}) == 1:
        names = list(data)
        return [dict(zip(names, values)) for values in zip(*lists)]
    return None


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged or foreign file
        raise SteerError(f"{path}: not a readable parquet file ({_first_line(err)})") from None
    return table.to_pylist()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def find_split_file(directory: Path, split: str) -> tuple[Path | None, list[Path]]:
    """The data file for ``split`` inside ``directory``, and every path that was looked for.

    Looks for ``<split>.{jsonl,json,parquet}``, then the hub snapshot layout
    ``data/<split>-*.{parquet,jsonl,json}``, then a directory holding exactly one data file.
    """
    tried = [directory / f"{split}{s}" for s in SUPPORTED_SUFFIXES]
    for candidate in tried:
        if candidate.is_file():
            return candidate, tried
    for suffix in SUPPORTED_SUFFIXES:
        pattern = f"data/{split}-*{suffix}"
        tried.append(directory / pattern)
        shards = sorted(directory.glob(pattern))
        if len(shards) == 1:
            return shards[0], tried
    files = [p for p in sorted(directory.iterdir()) if p.is_file() and is_data_file_name(p)]
    tried.append(directory / "<the only .jsonl/.json/.parquet file>")
    if len(files) == 1:
        return files[0], tried
    return None, tried


def locate_data_file(path: Path, split: str, *, what: str, missing: str) -> Path:
    """``path`` itself, or the ``split`` file inside it when it is a directory; one-line errors otherwise.

    ``what`` names the file looked for in a directory ("benchmark file"); ``missing`` is the whole
    error for a path that does not exist.
    """
    if path.is_dir():
        found, tried = find_split_file(path, split)
        if found is None:
            raise SteerError(f"no {what} in directory {path}; looked for {', '.join(str(p) for p in tried)}")
        return found
    if not path.exists():
        raise SteerError(missing)
    return path


def source_name(path: Path, split: str) -> str:
    """A short name for where rows came from: the file's stem, or its directory for ``<split>.jsonl``."""
    return path.parent.name if path.stem in ("test", "train", split) else path.stem
