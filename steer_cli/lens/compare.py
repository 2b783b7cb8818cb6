"""`steer lens --compare`: per-layer cosine between two vectors files (seeds, checkpoints); no model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rich.table import Table
from rich.text import Text

from steer_cli.errors import SteerError
from steer_cli.lens.logit import find_vectors, layer_cosines, vector_norms
from steer_cli.terminal import print_table, print_text
from steer_cli.vectors.file import load_vectors


@dataclass
class CompareResult:
    a: str
    b: str
    norms_a: list[float]
    norms_b: list[float]
    cosines: list[float]
    layers: list[int]  # layers where both vectors are non-zero
    notes: list[str] = field(default_factory=list)

    @property
    def mean_cosine(self) -> Optional[float]:
        vals = [self.cosines[i] for i in self.layers]
        return sum(vals) / len(vals) if vals else None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "steer-lens-compare", "format_version": 1, "a": self.a, "b": self.b,
            "layers": [{"layer": i, "norm_a": self.norms_a[i], "norm_b": self.norms_b[i], "cosine": self.cosines[i]}
                       for i in range(len(self.cosines))],
            "mean_cosine": self.mean_cosine,
        }


def compare_vectors(a: Optional[str | Path], b: str | Path, *, runs_dir: str | Path = "runs") -> CompareResult:
    """Per-layer cosine between two vectors files (two seeds, two checkpoints ...); no model needed."""
    path_a, note = find_vectors(a, runs_dir)
    path_b, _ = find_vectors(b, runs_dir)
    va, _ = load_vectors(path_a)
    vb, _ = load_vectors(path_b)
    if va.shape != vb.shape:
        raise SteerError(f"{path_a} is [{va.shape[0]}, {va.shape[1]}] but {path_b} is "
                         f"[{vb.shape[0]}, {vb.shape[1]}]; compare vectors of the same model")
    na, nb = vector_norms(va), vector_norms(vb)
    both = [i for i in range(va.shape[0]) if float(na[i]) > 0 and float(nb[i]) > 0]
    return CompareResult(str(path_a), str(path_b), [float(x) for x in na], [float(x) for x in nb],
                         [float(x) for x in layer_cosines(va, vb)], both, [note] if note else [])


def render_compare(result: CompareResult, console: Any) -> None:

    table = Table(title=Text(f"per-layer cosine: {result.a} vs {result.b}"), title_justify="left")
    for name in ("layer", "norm A", "norm B", "cosine"):
        table.add_column(name, justify="right")
    for i, c in enumerate(result.cosines):
        both = i in result.layers
        table.add_row(str(i), f"{result.norms_a[i]:.4g}", f"{result.norms_b[i]:.4g}", f"{c:+.4f}" if both else "—")
    print_table(console, table)
    mean = result.mean_cosine
    print_text(console, Text(f"mean cosine over {len(result.layers)} layer(s) with non-zero vectors: "
                       + (f"{mean:+.4f}" if mean is not None else "—")))
