"""steer bench on a tiny model: the numbers it reports are the right kind and the exact ones are exact.
(Speed targets live in the benchmark's own output, not in timed tests.)"""

from __future__ import annotations

import json

from cli_helpers import one_line_error
from typer.testing import CliRunner

from steer_cli.bench import (
    BenchConfig,
    check_targets,
    interleaved,
    interleaved_many,
    optimizer_state_bytes,
    paired_speed_ratio,
    ratios,
    run_bench,
)
from steer_cli.cli import _register, app

_register()


def test_bench_reports_every_setup(tiny_lm):
    cfg = BenchConfig(model=str(tiny_lm), sequences=2, prompt_len=8, completion_len=8, repeats=1,
                      gen_prompts=1, gen_tokens=4, gen_repeats=1, memory=False)
    result = run_bench(cfg)
    layers, hidden = result["num_layers"], result["hidden_size"]
    steering, lora, full = (result["setups"][k] for k in ("steering", "lora", "full"))
    assert steering["trainable_params"] == layers * hidden
    assert steering["optimizer_state_bytes"] == 2 * layers * hidden * 4  # Adam moments, float32
    assert full["trainable_params"] == result["model_params"]
    assert full["optimizer_state_bytes"] == 2 * 4 * result["model_params"]
    assert 0 < lora["trainable_params"] < full["trainable_params"]
    for s in (steering, lora, full):
        assert s["update_step_seconds"] > 0
    assert result["forward_seconds"] > 0
    gen = result["generation"]["hf"]
    assert gen["tokens_per_second_bare"] > 0 and gen["tokens_per_second_steered"] > 0
    assert set(result["ratios"]) >= {"update_time_steering_over_full", "update_time_steering_over_forward",
                                     "generation_hf_steered_over_bare"}
    exact = [t for t in check_targets(result) if t["key"] == "optimizer_state_steering_bytes"]
    assert exact and exact[0]["met"] is True


def test_optimizer_state_bytes_counts_moments_and_counters_apart():
    import torch

    p = torch.nn.Parameter(torch.zeros(3, 5))
    opt = torch.optim.AdamW([p])
    p.grad = torch.ones_like(p)
    opt.step()
    moments, counters = optimizer_state_bytes(opt)
    assert moments == 2 * 15 * 4 and counters == 4


def test_bench_cli_writes_json_that_report_reads(tiny_lm, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--model", str(tiny_lm), "--sequences", "2", "--prompt-len", "8",
                                      "--completion-len", "8", "--repeats", "1", "--no-memory", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["kind"] == "steer-bench" and "targets" in data
    report = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert report.exit_code == 0, report.output
    assert "Optimizer Memory" in report.output or "optimizer" in report.output.lower()


def test_bench_bad_flags_are_one_line_error_naming_each(tiny_lm):
    result = CliRunner().invoke(app, ["bench", "--model", str(tiny_lm), "--micro-batch-size", "0",
                                      "--setups", "steering,qlora", "--backend", "tgi"])
    one_line_error(result, "--micro-batch-size must be a positive integer", "qlora", "tgi")


def test_render_shows_vllm_engine_start_sync_and_ratios(capsys):
    from steer_cli.cli.bench_render import render as _render

    setup = {"trainable_params": 4096, "optimizer_state_bytes": 32768, "update_step_seconds": 1.0,
             "peak_memory_bytes": 10 << 20}
    result = {"model": "m", "model_params": 10**6, "num_layers": 2, "hidden_size": 2048, "machine": {"gpu": None, "cpu": "cpu", "torch": "2"},
              "setups": {"steering": setup, "full": {**setup, "update_step_seconds": 2.0}}, "forward_seconds": 0.5,
              "generation": {"vllm": {"tokens_per_second_bare": 100.0, "tokens_per_second_steered": 99.0,
                                      "engine_start_seconds_bare": 12.0, "engine_start_seconds_steered": 13.5}},
              "vllm_sync": {"vector_sync_seconds": 0.002, "full_reload_seconds": 2.0}}
    result["ratios"] = ratios(result)
    result["targets"] = check_targets(result)
    _render(result)
    out = " ".join(capsys.readouterr().out.split())
    assert "engine start 12 s bare, 13.5 s steered" in out, out
    assert "vector sync 2 ms, full weight reload 2 s" in out, out
    assert "0.500" in out and "32768 == 32768 yes" in out  # steering / full time; exact optimizer state


def test_interleaved_alternates_order_and_paired_ratio_is_median_of_pairs():
    calls = []
    bare_t = iter([9.0, 2.0, 4.0, 2.0])
    steered_t = iter([9.0, 1.0, 1.0, 4.0])

    def bare():
        calls.append("b")
        return next(bare_t)

    def steered():
        calls.append("s")
        return next(steered_t)

    b, s = interleaved(bare, steered, 3)
    assert calls == ["b", "s", "b", "s", "s", "b", "b", "s"]  # warm-up, then AB, BA, AB
    assert b == [2.0, 4.0, 2.0] and s == [1.0, 1.0, 4.0]
    assert paired_speed_ratio(b, s) == 2.0  # pairs 2/1, 4/1, 2/4 -> median 2.0


def test_interleaved_many_rotates_the_order_each_repeat():
    calls = []

    def make(name):
        def run():
            calls.append(name)
            return 1.0
        return run

    times = interleaved_many({"a": make("a"), "b": make("b"), "c": make("c")}, repeats=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(t) == 3 for t in times.values())


def test_time_ratios_are_medians_of_per_repeat_ratios():
    from steer_cli.bench.timing import time_ratios

    setups = {"steering": {"update_step_seconds_all": [1.0, 5.0, 2.0]},
              "full": {"update_step_seconds_all": [2.0, 5.0, 8.0]}}
    r = time_ratios(setups, forward=[1.0, 1.0, 1.0])
    # per repeat 0.5, 1.0, 0.25 -> 0.5; a ratio of medians would give 2/5 = 0.4
    assert r["update_time_steering_over_full"] == 0.5
    assert r["update_time_steering_over_forward"] == 2.0


def test_fit_scaling_recovers_per_token_and_per_layer_costs():
    from steer_cli.bench import fit_scaling

    w0, w, a, b = 5e9, 9e8, 2e5, 4e5
    points = [{"layers": L, "tokens": T, "bytes": w0 + L * w + T * (a + L * b)}
              for L in (1, 2) for T in (576, 1088, 2112)]
    fit = fit_scaling(points, real_layers=28)
    for key, value in (("bytes_fixed", w0), ("bytes_per_layer", w), ("bytes_per_token", a),
                       ("bytes_per_token_per_layer", b)):
        assert abs(fit[key] - value) / value < 1e-6, key
    assert abs(fit["predicted_bytes"]["4096"] - (w0 + 28 * w + 4096 * (a + 28 * b))) < 1e3
    assert fit_scaling(points[:3], real_layers=28) is None  # one depth: no per-layer cost


def test_fit_scaling_separates_the_log_prob_chunk_that_stops_growing_at_one_chunk():
    from steer_cli.bench import fit_scaling

    w0, w, a, b, c, chunk, prompt = 2e9, 4.7e8, 1.8e5, 1.6e5, 1.5e6, 1024, 64
    points = [{"layers": L, "tokens": prompt + C, "completion_tokens": C,
               "bytes": w0 + L * w + (prompt + C) * (a + L * b) + min(C, chunk) * c}
              for L in (1, 2) for C in (512, 1024, 2048)]
    fit = fit_scaling(points, real_layers=28, chunk=chunk)
    assert abs(fit["bytes_per_logprob_chunk_token"] - c) / c < 1e-6
    assert abs(fit["bytes_per_token_per_layer"] - b) / b < 1e-6
    expected = w0 + 28 * w + 4096 * (a + 28 * b) + chunk * c  # a preset's whole sequence, completion > chunk
    assert abs(fit["predicted_bytes"]["4096"] - expected) / expected < 1e-6


def test_geometry_models_have_the_real_width_and_any_depth():
    from steer_cli.bench import geometry_of, synthetic_config

    assert geometry_of("qwen2.5-math-7b-2layers") == ("qwen2.5-math-7b", 2)
    assert geometry_of("random-50m") is None
    c = synthetic_config("qwen2.5-math-7b-2layers")
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size,
            c.tie_word_embeddings, c.num_hidden_layers) == (3584, 18944, 28, 4, 152064, False, 2)
    assert synthetic_config("qwen2.5-math-7b-2layers", layers=1).num_hidden_layers == 1


def test_bench_memory_at_several_lengths_without_timing_or_generation(tiny_lm, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--model", str(tiny_lm), "--setups", "steering", "--backend", "none",
                                      "--no-timing", "--prompt-len", "8", "--completion-len", "8",
                                      "--memory-lengths", "8,64", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    points = data["memory_scaling"]["points"]["steering"]
    assert [p["completion_len"] for p in points] == [8, 64] and all(p["bytes"] > 0 for p in points)
    assert data["generation"] == {} and data["setups"]["steering"]["update_step_seconds"] is None
    assert data["setups"]["steering"]["peak_memory_bytes"] == points[0]["bytes"]


def test_bench_memory_layers_needs_a_synthetic_model(tiny_lm):
    result = CliRunner().invoke(app, ["bench", "--model", str(tiny_lm), "--memory-layers", "1,2", "--backend", "none"])
    one_line_error(result, "--memory-layers needs a synthetic model")
