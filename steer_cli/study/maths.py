"""The arithmetic of the accuracy studies, as pure functions on lists (None = missing, never NaN).

- ``relative_maps``: the pair study's three relative-improvement maps (mechanistic paper, Fig. 13):
  against the column's diagonal (``prev``), the row's diagonal (``next``) and the better of the two
  (``max``), each normalised by the gap to the all-layer run's accuracy P.
- ``row_normalised``: the transfer table's rows as (v - base) / (own - base).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

Grid = list[list[Optional[float]]]


def _num(x: Any) -> Optional[float]:
    if x is None or isinstance(x, bool):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    if num is None or den is None or den == 0:
        return None
    return num / den


def relative_maps(grid: Sequence[Sequence[Any]], full: Any) -> dict[str, Grid]:
    """For a square ``grid`` (A[a][b] = accuracy of the pair a, b) and the all-layer accuracy P:

    - prev[a][b] = (A_ab - A_bb) / (P - A_bb)
    - next[a][b] = (A_ab - A_aa) / (P - A_aa)
    - max[a][b]  = (A_ab - m) / (P - m), m = max(A_aa, A_bb)

    1 means the pair reaches the all-layer run, 0 no gain over the single vector(s). None where an
    input is missing or a denominator is 0."""
    n = len(grid)
    a = [[_num(grid[i][j]) for j in range(n)] for i in range(n)]
    p = _num(full)
    diag = [a[i][i] for i in range(n)]

    def rel(x: Optional[float], ref: Optional[float]) -> Optional[float]:
        if x is None or ref is None or p is None:
            return None
        return _ratio(x - ref, p - ref)

    best = [[None if diag[i] is None or diag[j] is None else max(diag[i], diag[j]) for j in range(n)]
            for i in range(n)]
    return {
        "prev": [[rel(a[i][j], diag[j]) for j in range(n)] for i in range(n)],
        "next": [[rel(a[i][j], diag[i]) for j in range(n)] for i in range(n)],
        "max": [[rel(a[i][j], best[i][j]) for j in range(n)] for i in range(n)],
    }


def row_normalised(matrix: Sequence[Sequence[Any]], base: Sequence[Any]) -> Grid:
    """``(v - base_r) / (own_r - base_r)`` for each cell of row r, where own_r = matrix[r][r] (the
    row's model with its own vectors): 1 on the diagonal, 0 for no gain over the base model."""
    out: Grid = []
    for r, row in enumerate(matrix):
        b = _num(base[r])
        own = _num(row[r]) if r < len(row) else None
        out.append([None if _num(v) is None or b is None or own is None else _ratio(_num(v) - b, own - b)
                    for v in row])
    return out


def mirrored(n: int, upper: dict[tuple[int, int], Optional[float]]) -> Grid:
    """A symmetric n x n grid from values at (a, b), a <= b (None where absent)."""
    grid: Grid = [[None] * n for _ in range(n)]
    for (a, b), v in upper.items():
        grid[a][b] = grid[b][a] = _num(v)
    return grid


def nan_to_none(obj: Any) -> Any:
    """Floats that are not finite become None, recursively (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj
