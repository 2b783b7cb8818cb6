"""steer study seeds (E10): per-layer cosine, |ΔAcc| and greedy axis removal; exact checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.errors import SteerError
from steer_cli.study.record import read_study
from steer_cli.study.seeds import greedy_axis_removal, read_layer_accuracies, row_cosines, run_seeds
from steer_cli.vectors.file import save_vectors

runner = CliRunner()
_register()


def _brute_force_removal(a, b):
    """Greedy removal recomputing every candidate's cosine from scratch."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    alive = list(range(a.size))
    curve = [a @ b / np.linalg.norm(a) / np.linalg.norm(b)]
    while len(alive) > 1:
        best, best_cos = None, -np.inf
        for j in alive:
            keep = [k for k in alive if k != j]
            x, y = a[keep], b[keep]
            if not x.any() or not y.any():
                continue
            c = x @ y / np.linalg.norm(x) / np.linalg.norm(y)
            if c > best_cos:
                best, best_cos = j, c
        if best is None:
            break
        alive.remove(best)
        curve.append(best_cos)
    return curve


def test_greedy_removal_matches_brute_force_and_never_falls_for_a_positive_pair():
    rng = np.random.default_rng(3)
    shared = rng.normal(size=24)
    a, b = shared + 0.8 * rng.normal(size=24), shared + 0.8 * rng.normal(size=24)
    r = greedy_axis_removal(a, b)
    np.testing.assert_allclose(r.cosines, _brute_force_removal(a, b), rtol=1e-10, atol=1e-12)
    assert r.dims == list(range(24, 0, -1)) and len(r.removed) == 23
    assert r.cosines[0] == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-12)
    assert all(later >= earlier - 1e-12 for earlier, later in zip(r.cosines, r.cosines[1:]))
    assert r.cosines[-1] == pytest.approx(1.0) and r.dims[-1] == 1
    assert sorted(r.kept(24)) == list(range(24))  # every coordinate once: the survivor, then removals reversed
    assert r.dims_reaching(r.cosines[0]) == 24 and r.dims_reaching(1.5) is None
    sampled = r.sampled(5)
    assert sampled[0] == [24, r.cosines[0]] and sampled[-1] == [1, r.cosines[-1]] and len(sampled) <= 7


def test_self_gives_one_and_sign_flip_gives_minus_one_all_the_way():
    v = np.random.default_rng(0).normal(size=16)
    same = greedy_axis_removal(v, v)
    np.testing.assert_allclose(same.cosines, 1.0, atol=1e-12)
    flipped = greedy_axis_removal(v, -v)
    np.testing.assert_allclose(flipped.cosines, -1.0, atol=1e-12)
    assert flipped.dims[-1] == 1
    with pytest.raises(ValueError):
        greedy_axis_removal(np.zeros(4), v[:4])


def test_removal_never_empties_a_vector():
    # disjoint supports: every removal would leave one vector zero except the shared zeros
    r = greedy_axis_removal([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    assert r.dims == [3, 2] and r.removed == [2] and r.cosines == [0.0, 0.0]


def test_row_cosines_are_one_on_itself_none_on_zero_rows_and_minus_one_flipped():
    a = torch.randn(4, 8)
    a[2] = 0
    cos = row_cosines(a, a)
    assert cos[2] is None and all(c == pytest.approx(1.0) for i, c in enumerate(cos) if i != 2)
    assert all(c == pytest.approx(-1.0) for c in row_cosines(a, -a) if c is not None)


def test_accuracy_files_of_every_accepted_shape(tmp_path):
    layers_study = {"kind": "steer-study", "format_version": 1, "experiment": "layers", "inputs": {},
                    "settings": {}, "results": {"layers": [0, 2], "accuracy": {"demo": [0.1, 0.3],
                                                                               "average": [0.2, 0.4]}}}
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.json").write_text(json.dumps(layers_study))
    assert read_layer_accuracies(tmp_path / "s") == {0: 0.2, 2: 0.4}
    (tmp_path / "d.json").write_text(json.dumps({"0": 0.5, "1": {"accuracy": 0.25}}))
    assert read_layer_accuracies(tmp_path / "d.json") == {0: 0.5, 1: 0.25}
    (tmp_path / "l.json").write_text(json.dumps([{"layer": 3, "mean": 0.75}]))
    assert read_layer_accuracies(tmp_path / "l.json") == {3: 0.75}
    (tmp_path / "bad.json").write_text(json.dumps({"hello": "world"}))
    with pytest.raises(SteerError, match="no per-layer accuracies"):
        read_layer_accuracies(tmp_path / "bad.json")


def _seed_files(tmp_path, *, layers=4, hidden=32, seed=0, **meta):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(layers, hidden, generator=g)
    paths = []
    for k in range(2):
        v = shared + 0.7 * torch.randn(layers, hidden, generator=g)
        v[1] = 0 if k == 1 else v[1]  # a zero row in one file: no cosine at layer 1
        paths.append(save_vectors(tmp_path / f"seed{k}.safetensors", v, base_model="demo", **meta))
    return paths


def test_run_seeds_pairs_layers_and_accuracy_differences(tmp_path):
    a, b = _seed_files(tmp_path)
    (tmp_path / "acc_a.json").write_text(json.dumps({"0": 0.5, "2": 0.25}))
    (tmp_path / "acc_b.json").write_text(json.dumps({"0": 0.25, "2": 0.25}))
    result = run_seeds([a, b], accuracies=[tmp_path / "acc_a.json", tmp_path / "acc_b.json"], layers=[0, 1, 2])
    rows = result.pairs[(0, 1)]
    assert [pl.layer for pl in rows] == [0, 1, 2]
    assert rows[1].cosine is None and rows[1].removal is None
    assert rows[0].acc_diff == 0.25 and rows[2].acc_diff == 0.0 and rows[1].acc_diff is None
    doc = result.to_json()
    assert doc["pairs"][0]["layers"][0]["axis_removal"]["dims_at"]["0.9"] is not None
    assert any("zero vector" in n for n in result.notes)


def test_bad_inputs_are_refused(tmp_path):
    a, b = _seed_files(tmp_path)
    wide = save_vectors(tmp_path / "wide.safetensors", torch.randn(4, 48), base_model="demo")
    with pytest.raises(SteerError, match="same model"):
        run_seeds([a, wide])
    other = save_vectors(tmp_path / "other.safetensors", torch.randn(4, 32), base_model="x", unembed_sha256="1")
    mine = save_vectors(tmp_path / "mine.safetensors", torch.randn(4, 32), base_model="y", unembed_sha256="2")
    with pytest.raises(SteerError, match="different models"):
        run_seeds([other, mine])
    with pytest.raises(SteerError, match="out of range"):
        run_seeds([a, b], layers=[7])
    with pytest.raises(SteerError, match="at least two"):
        run_seeds([a])
    with pytest.raises(SteerError, match="one per vectors file"):
        run_seeds([a, b], accuracies=[tmp_path / "x.json"])


def test_cli_on_demo_sized_vectors_writes_study_json_and_figure(tmp_path):
    a, b = _seed_files(tmp_path, hidden=128)
    c = save_vectors(tmp_path / "seed2.safetensors", torch.randn(4, 128), base_model="demo")
    out = tmp_path / "out"
    result = runner.invoke(app, ["study", "seeds", str(a), str(b), str(c), "-o", str(out), "--json",
                                 "--plot", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert [(p["a"], p["b"]) for p in printed["pairs"]] == [(0, 1), (0, 2), (1, 2)]
    doc = read_study(out, "seeds")
    assert doc["inputs"]["vectors"][0]["sha256"] and doc["settings"]["thresholds"] == [0.9, 0.99]
    assert doc["results"]["figures"] == ["figures/seeds.png"]
    assert (out / "figures" / "seeds.png").stat().st_size > 0 and (tmp_path / "plots" / "seeds.png").exists()
    assert (out / "settings.yaml").exists()
    # a finished study is not replaced without --overwrite; the table form prints one row per layer
    one_line_error(runner.invoke(app, ["study", "seeds", str(a), str(b), "-o", str(out)]), "--overwrite")
    table = runner.invoke(app, ["study", "seeds", str(a), str(b), "-o", str(out), "--overwrite",
                                "--no-axis-removal", "--no-plot"])
    assert table.exit_code == 0, table.output
    assert "dims@0.9" in table.stdout and len([ln for ln in table.stdout.splitlines() if ln.strip()[:1].isdigit()]) == 4
    one_line_error(runner.invoke(app, ["study", "seeds", str(a), str(tmp_path / "wide.safetensors")]), "does not exist")
    wide = save_vectors(tmp_path / "wide.safetensors", torch.randn(5, 128), base_model="demo")
    one_line_error(runner.invoke(app, ["study", "seeds", str(a), str(wide), "-o", str(tmp_path / "o2")]), "same model")
    one_line_error(runner.invoke(app, ["study", "seeds", str(a), str(b), "--layers", "9", "-o", str(tmp_path / "o3")]),
                   "out of range")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
