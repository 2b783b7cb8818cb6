"""One math problem with its gold answer, and how raw dataset rows map onto it."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from steer_cli.errors import SteerError

AnswerKind = Literal["plain", "gsm8k", "boxed_in", "list"]
ANSWER_KINDS: tuple[str, ...] = get_args(AnswerKind)

# Column names tried, in order, when a file comes without a field map.
PROBLEM_FIELDS = ("problem", "question", "Problem", "Question")
ANSWER_FIELDS = ("answer", "Answer", "final_answer", "solution", "Solution")
ID_FIELDS = ("id", "ID", "idx", "unique_id")


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str
    # The data file's record with all its fields (what reward plug-ins receive as ``rows``).
    row: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class FieldMap:
    """Which columns hold the problem, the answer and (optionally) an id, and how to read the answer.

    answer_kind: ``plain`` (the value itself), ``gsm8k`` (the text after the last ``####``, commas
    removed), ``boxed_in`` (the last ``\\boxed{...}`` of the field), ``list`` (items joined by ", ").
    """

    problem: str = "problem"
    answer: str = "answer"
    id: str | None = None
    answer_kind: AnswerKind = "plain"

    def __post_init__(self) -> None:
        if self.answer_kind not in ANSWER_KINDS:
            raise SteerError(
                f"unknown answer kind {self.answer_kind!r}; use one of {', '.join(ANSWER_KINDS)}"
            )
        if not self.problem or not self.answer:
            raise SteerError("a field map needs both a problem field and an answer field")

    @classmethod
    def from_spec(cls, spec: str) -> FieldMap:
        """Parse ``problem=question,answer=final_answer,id=idx,kind=list`` (any subset, any order)."""
        keys = {"problem": "problem", "answer": "answer", "id": "id", "kind": "answer_kind",
                "answer_kind": "answer_kind"}
        values: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or key not in keys or not value:
                raise SteerError(
                    f"bad field map {spec!r}: write it as problem=COL,answer=COL[,id=COL][,kind=KIND]"
                    f" with KIND one of {', '.join(ANSWER_KINDS)}"
                )
            values[keys[key]] = value
        return cls(**values)  # type: ignore[arg-type]

    def describe(self) -> str:
        parts = [f"problem={self.problem}", f"answer={self.answer}"]
        if self.id:
            parts.append(f"id={self.id}")
        if self.answer_kind != "plain":
            parts.append(f"kind={self.answer_kind}")
        return ",".join(parts)


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    start = text.rfind("\\boxed")
    while start != -1:
        i = start + len("\\boxed")
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j]
        # An unclosed or brace-less \boxed: an earlier one may still be complete.
        start = text.rfind("\\boxed", 0, start)
    return None


# "$69$,$84$": several math spans separated by commas, i.e. a list written as one string.
_MATH_SPAN_LIST = re.compile(r"^\$[^$]*\$(?:\s*,\s*\$[^$]*\$)+$")


def normalize_answer(value: Any) -> str | None:
    """A gold answer as a stripped string; None when it is missing or empty.

    Integral floats lose their ``.0`` (27.0 -> "27"), lists are joined by ", ", and one
    surrounding ``$...$`` is removed.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        items = [a for a in (normalize_answer(v) for v in value) if a]
        return ", ".join(items) or None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars from parquet/pandas
        return normalize_answer(value.item())
    text = str(value).strip()
    if _MATH_SPAN_LIST.match(text):
        return ", ".join(s.strip() for s in re.findall(r"\$([^$]*)\$", text) if s.strip()) or None
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$" and "$" not in text[1:-1]:
        text = text[1:-1].strip()
    return text or None


def extract_answer(value: Any, kind: AnswerKind) -> str | None:
    """The gold answer held in one field value, read the way ``kind`` says."""
    if kind == "gsm8k":
        if not isinstance(value, str) or "####" not in value:
            return None
        return normalize_answer(value.rsplit("####", 1)[1].replace(",", ""))
    if kind == "boxed_in":
        if not isinstance(value, str):
            # Some sets keep several reference solutions in a list; the last one decides.
            if isinstance(value, (list, tuple)) and value and isinstance(value[-1], str):
                value = value[-1]
            else:
                return None
        boxed = _last_boxed(value)
        return None if boxed is None else normalize_answer(boxed)
    return normalize_answer(value)


def row_to_problem(
    row: Mapping[str, Any], index: int, fields: FieldMap, *, source: str
) -> Problem | None:
    """One row as a Problem, or None when its problem or answer is missing or empty."""
    problem = row.get(fields.problem)
    if not isinstance(problem, str) or not problem.strip():
        return None
    answer = extract_answer(row.get(fields.answer), fields.answer_kind)
    if not answer:
        return None
    raw_id = row.get(fields.id) if fields.id else None
    pid = str(raw_id).strip() if raw_id is not None and str(raw_id).strip() else f"{source}:{index}"
    return Problem(id=pid, problem=problem.strip(), answer=answer, row=dict(row))


def rows_to_problems(
    rows: Iterable[Mapping[str, Any]], fields: FieldMap, *, source: str, strict: bool = False
) -> tuple[list[Problem], int]:
    """Problems in row order and the number of rows skipped for a missing/empty problem or answer.

    With ``strict`` the first bad row raises SteerError instead (benchmarks must be complete).
    """
    problems: list[Problem] = []
    skipped = 0
    for index, row in enumerate(rows):
        p = row_to_problem(row, index, fields, source=source) if isinstance(row, Mapping) else None
        if p is not None:
            problems.append(p)
            continue
        if strict:
            raise SteerError(
                f"{source}: row {index} has no usable problem/answer with fields "
                f"[{fields.describe()}] (row keys: {_keys(row)}); fix the file or pass the right fields"
            )
        skipped += 1
    return problems, skipped


def _keys(row: Any) -> str:
    return ", ".join(map(str, row.keys())) if isinstance(row, Mapping) else type(row).__name__


def columns_of(rows: Sequence[Mapping[str, Any]], sample: int = 100) -> list[str]:
    """Column names seen in the first ``sample`` rows, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows[:sample]:
        if isinstance(row, Mapping):
            seen.update(dict.fromkeys(map(str, row.keys())))
    return list(seen)


def guess_fields(rows: Sequence[Mapping[str, Any]], *, source: str) -> FieldMap:
    """A field map from common column names (problem/question, answer/final_answer/solution)."""
    columns = columns_of(rows)
    problem = next((c for c in PROBLEM_FIELDS if c in columns), None)
    answer = next((c for c in ANSWER_FIELDS if c in columns), None)
    if problem is None or answer is None:
        raise SteerError(
            f"{source}: cannot tell which columns hold the problem and answer; expected one of "
            f"{'/'.join(PROBLEM_FIELDS)} and one of {'/'.join(ANSWER_FIELDS)}, found: "
            f"{', '.join(columns) or 'no columns'}; pass a field map such as problem=COL,answer=COL"
        )
    kind: AnswerKind = "plain"
    if answer.lower() == "solution":
        kind = "boxed_in"
    else:
        # Most, not all: a GSM8K-style file with one marker-less row should skip that row.
        values = [r.get(answer) for r in rows[:100] if isinstance(r, Mapping) and r.get(answer)]
        if 2 * sum(isinstance(v, str) and "####" in v for v in values) > len(values):
            kind = "gsm8k"
        elif 2 * sum(isinstance(v, (list, tuple)) for v in values) > len(values):
            kind = "list"
    return FieldMap(
        problem=problem,
        answer=answer,
        id=next((c for c in ID_FIELDS if c in columns), None),
        answer_kind=kind,
    )
