"""The data of Table 4: training on the reference's ummagumm-a/cot-free-dataset_dedup (its GSM8K or
MATH rows), evaluating GSM8K on its seeded random 500 test problems."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from steer_cli.data.benchmarks import load_benchmark
from steer_cli.data.datasets import TRAIN_SETS, load_train_set
from steer_cli.data.subsets import subset_indices
from steer_cli.errors import SteerError
from steer_cli.presets import preset_layer
from steer_cli.settings import build_settings

FIXTURE = Path(__file__).parent / "fixtures" / "data" / "cot_free_dedup_train.jsonl"  # its columns, made-up rows
COT_FREE = "ummagumm-a/cot-free-dataset_dedup"  # dataset_path of the reference's gsm8k/math configs


@pytest.fixture
def cot_free_hub(monkeypatch, tmp_path):
    """datasets.load_dataset answering for the hub id with a local file of the same columns, read by
    the real loader; records every call."""
    import datasets

    real = datasets.load_dataset
    calls = []

    def fake(path, name=None, *, split):
        calls.append((path, name, split))
        if path != COT_FREE:
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")
        return real("json", data_files=str(FIXTURE), split=split, cache_dir=str(tmp_path / "hf"))

    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


def test_gsm8k_and_math_read_their_rows_of_the_reference_set(cot_free_hub):
    gsm8k, skipped = load_train_set("gsm8k")
    assert cot_free_hub == [("ummagumm-a/cot-free-dataset_dedup", None, "train")]
    assert [(p.answer, p.row["source"]) for p in gsm8k] == [("7", "gsm8k"), ("60", "gsm8k")]
    assert gsm8k[0].problem.startswith("Tom has 3 apples") and skipped == 1  # the empty answer
    math, skipped = load_train_set("math")
    assert [p.answer for p in math] == ["\\frac{5}{6}", "3"] and skipped == 0
    assert (TRAIN_SETS["gsm8k"].split, TRAIN_SETS["math"].source) == ("train", "math")


def test_the_table4_presets_train_on_it():
    for name in ("qwen2.5-1.5b/gsm8k/steering", "llama3.1-8b-instruct/math/full"):
        assert build_settings([preset_layer(name)]).data.dataset == name.split("/")[1]


def test_a_hub_set_without_that_source_is_one_line_error(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, name=None, *, split: [{"problem": "q", "answer": "1", "source": "aqua"}])
    with pytest.raises(SteerError, match=r"no rows with source 'gsm8k' \(sources found: aqua\)"):
        load_train_set("gsm8k")


def test_a_local_file_keeps_its_source_rows_or_is_taken_whole(tmp_path):
    (tmp_path / "math").mkdir()
    (tmp_path / "math" / "train.jsonl").write_text(FIXTURE.read_text())
    problems, _ = load_train_set("math", data_dir=tmp_path)
    assert [p.answer for p in problems] == ["\\frac{5}{6}", "3"]
    (tmp_path / "gsm8k").mkdir()  # openai/gsm8k's own columns, no source column
    (tmp_path / "gsm8k" / "train.jsonl").write_text(json.dumps({"question": "q?", "answer": "x\n#### 4"}) + "\n")
    assert [p.answer for p in load_train_set("gsm8k", data_dir=tmp_path)[0]] == ["4"]


def test_subset_is_the_reference_draw():
    drawn = np.random.default_rng(0).choice(range(1319), size=500, replace=False)
    assert subset_indices(1319, 500, 0) == sorted(drawn.tolist())
    assert subset_indices(10, 500, 3) == list(range(10))  # min(size, total), as the reference
    with pytest.raises(ValueError):
        subset_indices(10, 0, 0)


@pytest.mark.shared_data
def test_gsm8k_test_500_seeded_subset(shared_data):
    problems = load_benchmark("gsm8k", shared_data, limit=500, subset_seed=0)
    ids = [p.id for p in problems]
    assert len(ids) == len(set(ids)) == 500
    rows = [json.loads(x) for x in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    want = sorted(np.random.default_rng(0).choice(range(len(rows)), size=500, replace=False).tolist())
    assert [int(i) for i in ids] == [rows[i]["idx"] for i in want]
    assert [p.problem for p in problems] == [rows[i]["question"].strip() for i in want]
    assert [p.id for p in load_benchmark("gsm8k", shared_data, limit=500, subset_seed=0)] == ids  # deterministic
    assert ids != [p.id for p in load_benchmark("gsm8k", shared_data, limit=500)]  # not the first 500
    assert ids != [p.id for p in load_benchmark("gsm8k", shared_data, limit=500, subset_seed=1)]
