"""steer study patch end to end on the shipped demo: the KL identities in study.json, the accuracy
cells (the no-patch cell is `steer eval` of the vector alone), resume, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import one_line_error
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.vectors.file import save_vectors

_register()
runner = CliRunner()


@pytest.fixture(scope="module")
def demo_vectors(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    return save_vectors(tmp_path_factory.mktemp("v") / "v.safetensors", 40.0 * torch.randn(4, 128, generator=g),
                        base_model="demo")


def test_kl_metric_identities(tmp_path, demo_vectors):
    out = tmp_path / "out"
    args = ["study", "patch", str(demo_vectors), "--prompts", "2", "--max-new-tokens", "6", "--batch", "2",
            "--modes", "no-patch,base,skip-attn,skip-layer,skip-head,steer-head,skip-k", "--heads", "0,all",
            "--path", "all,mlp", "--output-dir", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)["results"]
    assert (r["source_layer"], r["target_layer"], r["heads"], r["metric"]) == (2, 3, 2, "kl")
    kl = {p["key"]: p["kl"]["mean"] for p in r["patches"]}
    assert kl["no-patch"] == 0.0 and kl["base"] > 0
    assert kl["steer-head-0_1"] == pytest.approx(0.0, abs=1e-9)  # every head steered = no patch
    assert kl["skip-head-0_1"] == pytest.approx(kl["skip-attn"], rel=1e-4)  # every head vanilla = skip-attn
    assert kl["skip-head-0-mlp"] != kl["skip-head-0"] and "skip-k-0-mlp" not in kl  # paths: z modes only
    assert r["samples"] == 2 and r["positions"] > 0
    assert {p.name for p in (out / "figures").iterdir()} == {"heads.png", "baseline_tokens.png"}
    table = runner.invoke(app, args[:-1])  # finished: read back and printed
    assert table.exit_code == 0 and "skip-head 0 (mlp)" in table.stdout


def test_accuracy_cells_are_ordinary_evals(tmp_path, demo_vectors):
    out = tmp_path / "acc"
    common = ["--benchmarks", "demo", "--limit", "2", "--max-new-tokens", "12"]
    result = runner.invoke(app, ["study", "patch", str(demo_vectors), "--metric", "accuracy", "--modes",
                                 "no-patch,steer-head", "--heads", "1", "--output-dir", str(out), *common])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "study.json").read_text())
    assert doc["results"]["cells"] == {"no-patch": "cells/no-patch", "steer-head-1": "cells/steer-head-1"}
    for cell in ("no-patch", "steer-head-1"):
        assert json.loads((out / "cells" / cell / "summary.json").read_text())["label"] == cell
    # the no-patch cell is `steer eval` of the vector of layer 2 alone: the same samples
    alone = runner.invoke(app, ["eval", "--model", "demo", "--vectors", str(out / "source-vector.safetensors"),
                                "--output-dir", str(tmp_path / "eval"), *common])
    assert alone.exit_code == 0, alone.output
    ours = (out / "cells" / "no-patch" / "seed-0" / "demo.jsonl").read_text().splitlines()
    theirs = (tmp_path / "eval" / "seed-0" / "demo.jsonl").read_text().splitlines()
    assert [json.loads(x)["samples"] for x in ours] == [json.loads(x)["samples"] for x in theirs]


def test_one_line_errors(tmp_path, demo_vectors):
    base = ["study", "patch", str(demo_vectors), "--prompts", "1", "--output-dir"]
    one_line_error(runner.invoke(app, base + [str(tmp_path / "a"), "--heads", "2"]), "head 2 is out of range")
    one_line_error(runner.invoke(app, base + [str(tmp_path / "b"), "--source-layer", "3"]),
                   "--source-layer 3 is out of range")
    one_line_error(runner.invoke(app, base + [str(tmp_path / "c"), "--modes", "swap-head"]), "unknown patch mode")
    one_line_error(runner.invoke(app, base + [str(tmp_path / "d"), "--reference", "skip-head"]), "--reference")
    other = save_vectors(tmp_path / "o.safetensors", torch.ones(3, 64), base_model="demo")
    one_line_error(runner.invoke(app, ["study", "patch", str(other)]), "another model")
    zero = save_vectors(tmp_path / "z.safetensors", torch.zeros(4, 128), base_model="demo")
    one_line_error(runner.invoke(app, ["study", "patch", str(zero)]), "row 2 of")


def test_kl_heads_figure_separates_small_kls(tmp_path, monkeypatch):
    """Head-patch KLs far below the base patch's stay apart: symlog axis from 0."""
    from steer_cli.study import patch_plots

    seen = []
    monkeypatch.setattr(patch_plots, "save_png", lambda fig, path: seen.append(fig) or path)
    patches = [{"key": "base", "mode": "base", "heads": [], "path": "all", "kl": {"mean": 2e-3}},
               {"key": "no-patch", "mode": "no-patch", "heads": [], "path": "all", "kl": {"mean": 0.0}},
               *({"key": f"skip-head-{h}", "mode": "skip-head", "heads": [h], "path": "all",
                  "kl": {"mean": 3e-7 * (h + 1)}} for h in (0, 1))]
    results = {"metric": "kl", "patches": patches, "reference": {"label": "no-patch"}, "source_layer": 2,
               "target_layer": 3}
    patch_plots.plot_heads(results, tmp_path / "heads.png")
    ax = seen[0].axes[0]
    assert ax.get_yscale() == "symlog" and ax.get_ylim()[0] == 0.0
