"""steer study persistence: the exact checks of the spec (E9) on tiny models, the pair-grid reader
and correlations (NaN-safe), and the command end to end on the shipped demo."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error
from tiny_models import make_model, sample_ids
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.study.forced import RowVector, layer_outputs
from steer_cli.study.persistence import Accumulator, correlations, read_pairs, reduce_differences
from steer_cli.study.record import write_study
from steer_cli.vectors.file import save_vectors

_register()
runner = CliRunner()


def _diffs(model, merged, i, ids):
    """Teacher-forced vanilla and steered copies in one batch: every layer's difference."""
    B = ids.shape[0]
    got = {}
    with torch.no_grad(), RowVector(model, i, merged[i], range(B, 2 * B)), \
            layer_outputs(model, lambda l, h: got.__setitem__(l, h[B:] - h[:B])):
        model(torch.cat([ids, ids]))
    return got


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_causality_and_the_diagonal(model_type):
    model = make_model(model_type)
    g = torch.Generator().manual_seed(4)
    merged = torch.randn(3, model.config.hidden_size, generator=g)
    ids = sample_ids()
    acc = Accumulator(3, model.config.hidden_size)
    keep = [slice(0, ids.shape[1])] * ids.shape[0]
    for i in range(3):
        diffs = _diffs(model, merged, i, ids)
        for layer in range(3):
            if layer < i:
                assert torch.equal(diffs[layer], torch.zeros_like(diffs[layer]))  # exactly, not nearly
            reduce_differences(acc, i, merged, diffs[layer], layer, keep)
            if layer == i:
                torch.testing.assert_close(diffs[layer], merged[i].expand_as(diffs[layer]))
        acc.count[i] += ids.numel()
    m = acc.matrices(merged, [0, 1, 2])
    np.testing.assert_allclose(np.diag(m["token_cos"]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.diag(m["diff_cos"]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.diag(m["layer_cos"]), 1.0, rtol=1e-6)
    assert np.isnan(m["token_cos"][2, 0]) and (acc.causal == 0).all()


def test_identity_layers_carry_the_vector_unchanged():
    """Layers after i with zeroed o_proj and down_proj are identities: D_l = s_i for l >= i; with
    every merged row equal to s_i, token_cos[i, l] = 1."""
    model = copy.deepcopy(make_model("qwen2"))
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    v = torch.randn(model.config.hidden_size)
    merged = v.expand(3, -1).clone()
    ids = sample_ids()
    diffs = _diffs(model, merged, 1, ids)
    acc = Accumulator(3, model.config.hidden_size)
    for layer in (1, 2):
        torch.testing.assert_close(diffs[layer], v.expand_as(diffs[layer]))
        reduce_differences(acc, 1, merged, diffs[layer], layer, [slice(0, ids.shape[1])] * 2)
    acc.count[1] += ids.numel()
    np.testing.assert_allclose(acc.matrices(merged, [1])["token_cos"][1, 1:], 1.0, rtol=1e-6)


def _pairs_study(path, layers, grid, relative=None):
    results = {"layers": layers, "benchmarks": ["demo"], "grid": {"demo": grid, "average": grid},
               "full": None, "relative": relative, "cells": {}}
    write_study(path, "pairs", inputs={}, settings={}, results=results)
    return path


def test_pair_grid_reader_and_nan_safe_correlations(tmp_path):
    grid = [[0.1, 0.3, None], [0.3, 0.2, 0.5], [None, 0.5, 0.4]]
    pairs = read_pairs(_pairs_study(tmp_path / "pairs", [0, 2, 3], grid), 4)
    assert np.isnan(pairs["accuracy"][1]).all() and pairs["accuracy"][0, 2] == 0.3
    assert np.isnan(pairs["accuracy"][0, 3]) and "normalized" not in pairs
    m = np.full((4, 4), np.nan)
    m[0, 2], m[0, 3], m[2, 3] = 0.2, 0.9, 0.6
    fit = correlations({"token_cos": m}, pairs)["token_cos"]
    assert fit["pair_accuracy"]["n"] == 2  # (0, 3) has no pair result; rows of layer 1 none
    assert fit["pair_accuracy"]["r"] == pytest.approx(1.0)
    assert fit["distance"]["n"] == 3
    with pytest.raises(Exception, match="layer 7 of the pair grid does not exist"):
        read_pairs(_pairs_study(tmp_path / "bad", [0, 7], [[0.1, 0.2], [0.2, 0.3]]), 4)


def test_command_on_the_demo(tmp_path):
    g = torch.Generator().manual_seed(0)
    merged = 2.0 * torch.randn(4, 128, generator=g)
    merged[1] = 0.0  # a layer without a single-layer vector: not injected, its column NaN
    path = save_vectors(tmp_path / "merged.safetensors", merged, base_model="demo")
    pairs = _pairs_study(tmp_path / "pairs", [0, 1, 2, 3], [[0.1 * (i + j) for j in range(4)] for i in range(4)])
    out = tmp_path / "out"
    args = ["study", "persistence", str(path), "--prompts", "2", "--max-new-tokens", "6", "--batch", "2",
            "--output-dir", str(out)]
    result = runner.invoke(app, args + ["--pairs", str(pairs), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)["results"]
    assert r["injected"] == [0, 2, 3] and r["completions"] == 6
    assert r["token_cos"][0][0] == pytest.approx(1.0) and r["token_cos"][2][1] is None
    assert r["token_cos"][0][1] is None  # s_1 is zero: no cosine with it
    assert all(v == 0.0 for v in r["causality_max_abs"].values())
    assert r["correlations"]["token_cos"]["pair_accuracy"]["n"] >= 1 and len(r["last_layer_lens"]) == 3
    assert {p.name for p in (out / "figures").iterdir()} == {"persistence.png", "vs_distance.png", "vs_pairs.png"}
    one_line_error(runner.invoke(app, args[:3] + ["--layers", "1", "--output-dir", str(tmp_path / "z")]),
                   "row 1 of the merged vectors is zero")
    one_line_error(runner.invoke(app, args[:3] + ["--layers", "9", "--output-dir", str(tmp_path / "z")]),
                   "--layers 9 is out of range")
    one_line_error(runner.invoke(app, args + ["--pairs", str(tmp_path / "missing")]), "does not exist")
