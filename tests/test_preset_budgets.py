"""Every paper preset's resolved rollout and evaluation budgets against the reference's config files
(tests/fixtures/reference_budgets.yaml), for the base model and a trained target alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from steer_cli.data.benchmarks import BENCHMARKS
from steer_cli.evaluate.benchmarks import BenchmarkData, resolve_eval_benchmarks
from steer_cli.evaluate.protocol import resolve_protocol
from steer_cli.evaluate.targets import Target
from steer_cli.presets import preset_layer, preset_names
from steer_cli.settings import build_settings

REF = yaml.safe_load((Path(__file__).parent / "fixtures" / "reference_budgets.yaml").read_text())
PAPER_PRESETS = [n for n in preset_names() if not n.startswith("demo")]


def _target(setup: str) -> Target:
    return Target(label=setup, setup=setup, model="m", output_dir=Path("unused"))


def _expected(name: str) -> dict:
    model, dataset, setup = name.split("/")
    setup = "steering" if setup.startswith("steering-layer-") else setup  # single-layer runs
    ref_model = REF["models"][model]
    if dataset == "deepscaler":
        train = REF["deepscaler"][ref_model["train_dir"]]
        ev = REF["eval_configs"][ref_model["eval_config"]]
        small = set(REF["eval_small_datasets"])
        return {
            "rollout_len": train["max_seq_length"], "n": train["num_generations"][setup],
            "eval_len": ev["max_seq_length"], "limit": None, "subset_seed": None,
            "benchmarks": set(REF["eval_datasets"]),
            "samples": lambda hub: ev["small_datasets_num_generations"] if hub in small else ev["num_generations"],
            "base_temperature": 0.0, "trained_temperature": REF["sampling"]["generation_temperature"],
        }
    train = REF["gsm8k_math"][ref_model["train_dir"]]
    ev = REF["gsm8k_math_eval"]
    return {
        "rollout_len": train["max_seq_length"], "n": train["num_generations"],
        "eval_len": train["max_seq_length"], "limit": ev["num_eval_samples"], "subset_seed": ev["subsample_ds_seed"],
        "benchmarks": {BENCHMARKS[b].hub.path for b in ev["test_datasets"].values()},
        "samples": lambda hub: ev["num_generations_in_eval"], "mean_k": ev["num_generations_in_eval"],  # mean@8
        # In-training evaluation: the step-0 (base) and trained evaluations sample alike.
        "base_temperature": REF["sampling"]["generation_temperature"],
        "trained_temperature": REF["sampling"]["generation_temperature"],
    }


def test_the_table_covers_every_paper_preset():
    assert len(PAPER_PRESETS) >= 130
    models = {n.split("/")[0] for n in PAPER_PRESETS}
    assert models == set(REF["models"])
    for name in PAPER_PRESETS:
        _expected(name)  # no KeyError: each preset has its reference config


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_preset_budgets_match_the_reference_configs(name):
    s = build_settings([preset_layer(name)])
    want = _expected(name)
    sampling = REF["sampling"]
    r = s.rollout
    assert (r.max_seq_length, r.num_generations) == (want["rollout_len"], want["n"]), name
    # The completion cap equals the context: the per-prompt budget max_seq_length - prompt decides.
    assert r.max_new_tokens == r.max_seq_length, name
    assert (r.temperature, r.top_p, r.top_k) == (sampling["generation_temperature"], sampling["top_p"],
                                                 sampling["top_k"]), name
    e = s.eval
    assert (e.limit, e.subset_seed, e.top_p) == (want["limit"], want["subset_seed"], sampling["top_p"]), name
    if "mean_k" in want:
        assert e.mean_k == want["mean_k"], name
    benches = resolve_eval_benchmarks(e.benchmarks)
    assert {BENCHMARKS[b].hub.path for b in benches} == want["benchmarks"], name
    for setup, temperature in (("base", want["base_temperature"]), (s.setup.kind, want["trained_temperature"])):
        proto = resolve_protocol(s, _target(setup))
        assert proto.temperature == temperature, (name, setup)
        assert (proto.max_seq_length, proto.max_new_tokens) == (want["eval_len"], None), (name, setup)
        for b in benches:
            data = BenchmarkData(b, b, BENCHMARKS[b].samples, [])
            expected = 1 if temperature == 0.0 else want["samples"](BENCHMARKS[b].hub.path)
            assert proto.samples(data) == expected, (name, setup, b)


def test_gsm8k_math_presets_evaluate_in_the_training_context():
    """The issue's case: the model block's 4K/32K eval context must not win over GSM8K/MATH's 1024."""
    names = [n for n in PAPER_PRESETS if n.split("/")[1] in ("gsm8k", "math")]
    assert len(names) == 32
    for name in names:
        s = build_settings([preset_layer(name)])
        assert (s.eval.max_seq_length, s.rollout.max_seq_length) == (1024, 1024), name
