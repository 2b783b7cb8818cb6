"""The built-in demo end to end, as a newcomer runs it: `steer train` (shortened), then `steer eval`,
`steer lens` and `steer report` with no paths, in a fresh working directory."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from steer_cli.cli import _register, app

_register()
runner = CliRunner()


@pytest.fixture
def in_tmp(tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def test_demo_learns_and_every_command_reads_its_run(in_tmp):
    result = runner.invoke(app, ["train", "--max-steps", "20"])
    assert result.exit_code == 0, result.output
    run = in_tmp / "runs" / "demo" / "demo" / "steering" / "seed-0"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 20
    first = sum(m["reward_mean"] for m in metrics[:5]) / 5
    last = sum(m["reward_mean"] for m in metrics[-5:]) / 5
    assert last > first + 0.2, (first, last)  # the reward went up

    result = runner.invoke(app, ["eval", "--limit", "40"])
    assert result.exit_code == 0, result.output
    base = json.loads((run / "eval" / "base" / "summary.json").read_text())
    trained = json.loads((run / "eval" / "final" / "summary.json").read_text())
    assert base["temperature"] == trained["temperature"] == 1.0  # same sampling for both
    assert trained["benchmarks"]["demo"]["mean"] > base["benchmarks"]["demo"]["mean"]
    assert "base" in result.output and "final" in result.output

    result = runner.invoke(app, ["lens", "--json", "--top-k", "5"])
    assert result.exit_code == 0, result.output
    lens = json.loads(result.output[result.output.index("{"):])
    assert len(lens["layers"]) == 4 and all(layer["norm"] > 0 for layer in lens["layers"])

    result = runner.invoke(app, ["report"])
    assert result.exit_code == 0, result.output
    assert "Steering" in result.output and "Base" in result.output
