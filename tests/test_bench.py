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
    from steer_cli.cli.bench_cmd import _render

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
