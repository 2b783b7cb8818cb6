"""A study grid on the hf backend generates its cells together, each row steered by its own cell's
vectors (steer_cli.evaluate.pooled): every cell still gets exactly the samples of `steer eval` of
that configuration, whatever else shares its batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.evaluate import pooled
from steer_cli.settings import Layer, build_settings
from steer_cli.study.grid import Cell, run_grid
from steer_cli.vectors.file import save_vectors

_register()
runner = CliRunner()
LAYERS, HIDDEN = 4, 128
PROTOCOL = {"benchmarks": ["demo"], "limit": 3, "max_new_tokens": 12, "samples": 2}


def texts(cell):
    return [[s["text"] for s in json.loads(x)["samples"]]
            for x in (cell / "seed-0" / "demo.jsonl").read_text().splitlines()]


def rows(seed, scale):
    return scale * torch.randn(LAYERS, HIDDEN, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    d = tmp_path_factory.mktemp("vectors")
    return {"merged": save_vectors(d / "merged.safetensors", rows(0, 4.0), base_model="demo", layers=[0, 1, 2, 3]),
            "two": save_vectors(d / "two.safetensors", rows(1, 10.0), base_model="demo", layers=[1, 3])}


def cells(v):
    return [Cell("merged-0-1", vectors=v["merged"], layers=(0, 1)),
            Cell("base", temperature=1.0),
            Cell("merged-x2-l3", vectors=v["merged"], scale=2.0, layers=(3,)),
            Cell("two-x0.5", vectors=v["two"], scale=0.5),
            Cell("merged", vectors=v["merged"])]


def alone(cell, out):
    """`steer eval` of one cell's configuration."""
    args = ["eval", "--model", "demo", "--benchmarks", "demo", "--limit", "3", "--max-new-tokens", "12", "--samples", "2",
            "--temperature", "1.0", "--set", "train.grader_workers=0", "-o", out]
    if cell.vectors is not None:
        args += ["--vectors", cell.vectors, "--scale", cell.scale]
        if cell.layers is not None:
            args += ["--layers", ",".join(map(str, cell.layers))]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return texts(out)


def grid_settings(pool_cells):
    return build_settings([Layer({"model": {"name": "demo"}, "train": {"grader_workers": 0},
                                  "eval": {**PROTOCOL, "pool_cells": pool_cells}}, "test")])


def test_pooled_cells_equal_steer_eval_of_each_cell(vectors, tmp_path, monkeypatch):
    grid = cells(vectors)
    pools_seen = []
    real = pooled.run_pool

    def spy(model, tokenizer, batch, grader, plans, *args, **kwargs):
        pools_seen.append([p.target.label for p in plans])
        return real(model, tokenizer, batch, grader, plans, *args, **kwargs)

    monkeypatch.setattr("steer_cli.evaluate.run.run_pool", spy)
    out = tmp_path / "grid"
    summaries = run_grid(grid_settings(8), grid, out, interactive=False)
    assert sorted(summaries) == sorted(c.key for c in grid)
    assert pools_seen == [[c.key for c in grid]]  # one pool: every cell in the same batches
    got = {c.key: texts(out / "cells" / c.key) for c in grid}
    # the cells differ from each other, so a row steered by another cell's vectors would show
    assert len({json.dumps(t) for t in got.values()}) == len(grid)
    for c in grid:
        assert got[c.key] == alone(c, tmp_path / "alone" / c.key), c.key

    # pools of two (and one left over) and one cell at a time: the same samples
    for size in (2, 1):
        other = tmp_path / f"grid-{size}"
        run_grid(grid_settings(size), grid, other, interactive=False)
        assert {c.key: texts(other / "cells" / c.key) for c in grid} == got
    assert [len(p) for p in pools_seen[1:]] == [2, 2]


def test_rows_take_their_own_cells_vectors(vectors, tmp_path, monkeypatch):
    """Swapping two cells' bank entries swaps their samples: rows read the bank by their cell."""
    grid = [Cell("a", vectors=vectors["merged"], layers=(0,)), Cell("b", vectors=vectors["two"], scale=1.5)]
    out = tmp_path / "right"
    run_grid(grid_settings(8), grid, out, interactive=False)
    right = {c.key: texts(out / "cells" / c.key) for c in grid}
    assert right["a"] != right["b"]

    real = pooled.bank_of
    monkeypatch.setattr(pooled, "bank_of", lambda plans, *a: tuple(x.flip(0) for x in real(plans, *a)))
    wrong = tmp_path / "wrong"
    run_grid(grid_settings(8), grid, wrong, interactive=False)
    # seeds belong to the sample, not the cell: with each other's entries the cells trade samples
    assert texts(wrong / "cells" / "a") == right["b"] and texts(wrong / "cells" / "b") == right["a"]


def test_pools_group_what_can_share_a_batch():
    class P:
        def __init__(self, setup, temp=1.0, place="layer_output", prefill=None):
            self.target = type("T", (), {"setup": setup, "prefill": prefill})()
            self.proto = type("Pr", (), {"temperature": temp, "top_p": 1.0, "seeds": [0], "max_new_tokens": 8,
                                         "max_seq_length": None, "samples_setting": None})()
            self.vectors = None if setup != "steering" else type("V", (), {"place": place})()

    plans = [P("steering"), P("base", temp=0.0), P("base"), P("steering", place="mlp_input"), P("lora"),
             P("steering", prefill="x"), P("steering")]
    assert pooled.pools(plans, 8) == [[0, 2, 6], [1], [3], [4], [5]]
    assert pooled.pools(plans, 2) == [[0, 2], [1], [3], [4], [5], [6]]
    assert pooled.pools(plans, 1) == [[i] for i in range(len(plans))]


def test_a_pooled_batch_holds_at_most_pool_rows_and_never_less_than_one_cells_batch():
    from steer_cli.evaluate.pooled import pooled_batch_groups

    assert pooled_batch_groups(8, 10, 1, 64) == 64  # the demo grid: 8 cells' batches of 8 in one
    assert pooled_batch_groups(8, 4, 4, 64) == 16  # 4 cells x 8 problems x 4 samples would be 128 rows
    assert pooled_batch_groups(8, 8, 32, 64) == 8  # AIME's 32 samples: one cell's batch, as unpooled
    assert pooled_batch_groups(8, 2, 1, 64) == 16


def test_a_small_pool_rows_cuts_the_pool_into_more_batches_with_the_same_samples(vectors, tmp_path, monkeypatch):
    from steer_cli.rollout.hf import HFBackend

    grid = cells(vectors)[:3]
    base = tmp_path / "wide"
    run_grid(grid_settings(8), grid, base, interactive=False)
    sizes = []
    real = HFBackend._sample_rows

    def spy(self, batch, sampling):
        sizes.append(len(batch))
        return real(self, batch, sampling)

    monkeypatch.setattr(HFBackend, "_sample_rows", spy)
    narrow = tmp_path / "narrow"
    settings = build_settings([Layer({"model": {"name": "demo"}, "train": {"grader_workers": 0},
                                      "eval": {**PROTOCOL, "pool_cells": 8, "pool_rows": 2},
                                      "rollout": {"batch_prompts": 1}}, "test")])
    run_grid(settings, grid, narrow, interactive=False)
    assert sizes and max(sizes) == 2  # one problem's 2 samples per batch
    assert {c.key: texts(narrow / "cells" / c.key) for c in grid} == {c.key: texts(base / "cells" / c.key) for c in grid}


def test_a_pooled_grid_on_two_processes_writes_what_one_writes(vectors, tmp_path):
    """torchrun: each process pools the cells of the shards dealt to it; the cells are the same."""
    args = ["study", "pairs", vectors["merged"], "--layers", "0,1", "--benchmarks", "demo", "--limit", "3",
            "--max-new-tokens", "12", "--samples", "2", "--set", "train.grader_workers=0",
            "--set", "eval.shard_samples=2"]
    one = tmp_path / "one"
    result = runner.invoke(app, [str(a) for a in args + ["-o", one]])
    assert result.exit_code == 0, result.output
    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "steer_cli", *map(str, args + ["-o", two])],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    keys = sorted(p.name for p in (one / "cells").iterdir())
    assert keys == ["pair-0-0", "pair-0-1", "pair-1-1"]
    assert sorted(p.name for p in (two / "cells").iterdir()) == keys
    for key in keys:
        assert texts(two / "cells" / key) == texts(one / "cells" / key), key
        assert json.loads((two / "cells" / key / "summary.json").read_text())["processes"] == 2
