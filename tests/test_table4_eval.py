"""`steer eval` of a GSM8K preset's run: the base model is evaluated as Table 4's Base row is (the
reference's step-0 evaluation), sampled at T = 1 with 8 samples like the trained vectors, on the
seeded random subset of GSM8K test."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.data.subsets import subset_indices
from steer_cli.presets import preset_layer
from steer_cli.settings import Layer, build_settings
from steer_cli.vectors.file import save_vectors

_register()


@pytest.mark.shared_data
def test_eval_of_a_gsm8k_run_samples_the_base_like_the_trained(tiny_lm, shared_data, tmp_path, coin_grader):
    run = tmp_path / "runs" / "tiny" / "gsm8k" / "steering" / "seed-0"
    (run / "final").mkdir(parents=True)
    # The preset as a run's settings; only what makes it small changes (model, data, 2 problems, 4 tokens, 1 seed).
    settings = build_settings([preset_layer("qwen2.5-1.5b/gsm8k/steering"), Layer({
        "model": {"name": str(tiny_lm), "dtype": "float32"},
        "eval": {"benchmarks": ["gsm8k"], "data_dir": str(shared_data), "limit": 2, "max_new_tokens": 4,
                 "seeds": [0]},
        "train": {"grader_workers": 0}, "output": {"output_dir": str(run)},
    }, "test")])
    (run / "settings.yaml").write_text(settings.to_yaml())
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    save_vectors(run / "final" / "vectors.safetensors", 0.5 * torch.randn(2, 64), base_model=str(tiny_lm),
                 dataset="gsm8k", step=1)

    result = CliRunner().invoke(app, ["eval", str(run)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    subset = [str(rows[i]["idx"]) for i in subset_indices(len(rows), 2, 0)]
    for label, setup in (("base", "base"), ("final", "steering")):
        summary = json.loads((run / "eval" / label / "summary.json").read_text())
        assert (summary["setup"], summary["temperature"], summary["seeds"]) == (setup, 1.0, [0]), label
        gsm8k = summary["benchmarks"]["gsm8k"]
        assert (gsm8k["samples"], gsm8k["problems"]) == (8, 2), label
        lines = [json.loads(x) for x in (run / "eval" / label / "seed-0" / "gsm8k.jsonl").read_text().splitlines()]
        assert [len(line["samples"]) for line in lines] == [8, 8], label
        assert [line["id"] for line in lines] == subset, label
