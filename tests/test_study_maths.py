"""The studies' arithmetic on toy grids, against direct computation (no model)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from steer_cli.study.layers import pick_checkpoint
from steer_cli.study.maths import mirrored, nan_to_none, relative_maps, row_normalised
from steer_cli.study.pairs import pair_cells


def test_relative_maps_on_a_3x3_grid_with_a_missing_pair():
    grid = [[0.2, 0.5, None],
            [0.5, 0.4, 0.6],
            [None, 0.6, 0.8]]
    p = 0.9
    maps = relative_maps(grid, p)
    for i in range(3):
        for j in range(3):
            a = grid[i][j]
            if a is None:
                assert maps["prev"][i][j] is None and maps["next"][i][j] is None and maps["max"][i][j] is None
                continue
            m = max(grid[i][i], grid[j][j])
            assert maps["prev"][i][j] == pytest.approx((a - grid[j][j]) / (p - grid[j][j]))
            assert maps["next"][i][j] == pytest.approx((a - grid[i][i]) / (p - grid[i][i]))
            assert maps["max"][i][j] == pytest.approx((a - m) / (p - m))
    assert all(maps["max"][i][i] == 0 for i in range(3))  # a vector with itself gains nothing
    assert maps["next"] == [list(r) for r in zip(*maps["prev"])]  # a symmetric grid: next is prev transposed


def test_relative_maps_without_p_or_with_a_zero_gap_are_missing():
    assert relative_maps([[0.5]], None)["max"] == [[None]]
    assert relative_maps([[0.5, 0.7], [0.7, 0.5]], 0.5)["max"][0][1] is None  # P equals the diagonal: 0 / 0
    assert relative_maps([[float("nan"), 0.7], [0.7, 0.5]], 0.9)["prev"][1][0] is None


def test_row_normalised_gives_one_for_own_vectors_and_zero_for_no_gain():
    matrix = [[0.8, 0.5], [0.3, 0.6]]
    base = [0.5, 0.2]
    norm = row_normalised(matrix, base)
    assert norm[0] == [pytest.approx(1.0), pytest.approx(0.0)]
    assert norm[1] == [pytest.approx((0.3 - 0.2) / (0.6 - 0.2)), pytest.approx(1.0)]
    assert row_normalised([[0.5, 0.6]], [0.5]) == [[None, None]]  # own == base: undefined


def test_mirrored_and_nan_to_none():
    assert mirrored(2, {(0, 1): 0.5, (1, 1): float("nan")}) == [[None, 0.5], [0.5, None]]
    assert nan_to_none({"a": [1.0, math.inf, (math.nan,)]}) == {"a": [1.0, None, [None]]}


def test_pair_cells_cover_every_pair_once():
    cells = pair_cells(Path("m.safetensors"), [3, 0, 1])
    assert [c.key for c in cells] == ["pair-0-0", "pair-0-1", "pair-0-3", "pair-1-1", "pair-1-3", "pair-3-3"]
    assert cells[0].layers == (0,) and cells[1].layers == (0, 1)


def test_pick_checkpoint():
    scores = {"checkpoint-2": 0.4, "checkpoint-4": 0.6, "final": 0.6}
    assert pick_checkpoint(scores, "final") == "final"
    # a tie goes to the earlier checkpoint, as `steer report --select best` picks (it went to the later)
    assert pick_checkpoint(scores, "best") == "checkpoint-4"
    assert pick_checkpoint({"checkpoint-2": 0.7, "checkpoint-4": None}, "best") == "checkpoint-2"
    assert pick_checkpoint({"checkpoint-2": 0.1, "checkpoint-4": 0.2}, "final") == "checkpoint-4"
