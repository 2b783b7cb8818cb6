"""steer eval end to end on a tiny model: files and their schema, skipping finished work, vectors,
adapters, training runs, the greedy protocol, and one-line errors that write nothing."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.evaluate import metrics as M
from steer_cli.settings import Layer, build_settings, load_settings_file
from steer_cli.vectors.file import save_vectors

_register()
runner = CliRunner()

SUMMARY_KEYS = {"kind", "format_version", "model", "setup", "vectors", "adapter", "run", "checkpoint",
                "train_dataset", "temperature", "top_p", "seeds", "benchmarks", "average"}
BENCH_KEYS = {"display", "metric", "samples", "problems", "per_seed", "mean", "std"}
SAMPLE_KEYS = {"text", "correct", "length", "stopped", "has_answer"}


def eval_args(*extra, model=None, data=None):
    args = ["eval"]
    if model is not None:
        args += ["--model", str(model)]
    if data is not None:
        args += ["--data-dir", str(data)]
    return args + ["--limit", "2", "--max-new-tokens", "8", "--set", "train.grader_workers=0", *map(str, extra)]


def invoke(args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(path):
    return {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_end_to_end_files_rerun_skips_and_overwrite_redoes(tiny_lm, shared_data, tmp_path, coin_grader):
    out = tmp_path / "out"
    args = eval_args("--benchmarks", "aime24,gsm8k", "--samples", "2", "--temperature", "1.0",
                     "--seeds", "0,1", "-o", out, model=tiny_lm, data=shared_data)
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert load_settings_file(out / "settings.yaml").eval.limit == 2
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert (summary["kind"], summary["format_version"], summary["setup"]) == ("steer-eval", 1, "base")
    assert summary["seeds"] == [0, 1] and summary["temperature"] == 1.0 and summary["vectors"] is None
    assert summary["processes"] == 1 and summary["wall_seconds"] > 0
    primary = {}
    for name, display in (("aime24", "AIME24"), ("gsm8k", "GSM8K")):
        entry = summary["benchmarks"][name]
        assert set(entry) == BENCH_KEYS
        assert (entry["display"], entry["metric"], entry["samples"], entry["problems"]) == (display, "avg@2", 2, 2)
        per_seed = []
        for seed in (0, 1):
            lines = jsonl(out / f"seed-{seed}" / f"{name}.jsonl")
            assert len(lines) == 2 and lines[0]["prompt_length"] > 0 and lines[0]["answer"]
            assert {"id", "problem", "answer", "samples", "prompt_length"} <= set(lines[0])
            assert all(set(s) == SAMPLE_KEYS and s["length"] <= 8 for line in lines for s in line["samples"])
            matrix = [[s["correct"] for s in line["samples"]] for line in lines]
            assert entry["per_seed"][str(seed)] == pytest.approx(
                {"avg@k": M.avg_at_k(matrix), "pass@1": M.pass_at_1(matrix), "mean@k": M.mean_at_k(matrix, 8)})
            per_seed.append(M.avg_at_k(matrix))
        assert (entry["mean"], entry["std"]) == pytest.approx(M.mean_std(per_seed))
        primary[name] = dict(zip(("0", "1"), per_seed))
    assert summary["average"] == pytest.approx(M.paper_average(primary))
    assert "AIME24" in result.stdout and "Average" in result.stdout and "avg@2" in result.stdout

    before = snapshot(out)
    again = invoke(args)
    assert again.exit_code == 0, again.output
    assert again.output.count("finished earlier, skipped") == 4
    after = snapshot(out)
    assert {p: t for p, t in after.items() if p.suffix == ".jsonl"} == {
        p: t for p, t in before.items() if p.suffix == ".jsonl"}
    rebuilt = json.loads((out / "summary.json").read_text())
    assert rebuilt.pop("wall_seconds") < summary.pop("wall_seconds")  # this run only merged
    assert rebuilt == summary

    other = invoke([a if a != "8" else "6" for a in map(str, args)])  # --max-new-tokens 6
    assert other.exit_code == 2 and "max_new_tokens: 8 -> 6" in other.output and "--overwrite" in other.output
    assert snapshot(out) == after

    texts = (out / "seed-1" / "gsm8k.jsonl").read_text()
    redo = invoke([*args, "--overwrite"])
    assert redo.exit_code == 0, redo.output
    assert "skipped" not in redo.output
    assert all(snapshot(out)[p] != t for p, t in after.items() if p.suffix == ".jsonl")
    assert (out / "seed-1" / "gsm8k.jsonl").read_text() == texts  # seeded: the same samples again


def test_vectors_are_applied_and_base_model_comes_from_their_file(tiny_lm, shared_data, tmp_path):
    vec = tmp_path / "random.safetensors"
    save_vectors(vec, 4.0 * torch.randn(2, 64, generator=torch.Generator().manual_seed(0)), base_model=str(tiny_lm))
    out = tmp_path / "out"
    result = invoke(eval_args("--vectors", vec, "--base", "--temperature", "0", "--benchmarks", "gsm8k",
                              "-o", out, data=shared_data))
    assert result.exit_code == 0, result.output
    steered = json.loads((out / "random" / "summary.json").read_text())
    base = json.loads((out / "base" / "summary.json").read_text())
    assert (steered["setup"], steered["vectors"], steered["model"]) == ("steering", str(vec), str(tiny_lm))
    assert base["setup"] == "base" and base["vectors"] is None
    texts = [[s["text"] for line in jsonl(out / label / "seed-0" / "gsm8k.jsonl") for s in line["samples"]]
             for label in ("base", "random")]
    assert texts[0] != texts[1]  # greedy both times: only the vectors differ
    assert "base" in result.stdout and "random" in result.stdout


def test_vectors_of_another_shape_are_refused_before_writing(tiny_lm, shared_data, tmp_path):
    vec = tmp_path / "wide.safetensors"
    save_vectors(vec, torch.zeros(3, 64))
    out = tmp_path / "out"
    result = invoke(eval_args("--vectors", vec, "--benchmarks", "gsm8k", "-o", out, model=tiny_lm, data=shared_data))
    assert result.exit_code == 2
    assert "[3, 64]" in result.output and "[2, 64]" in result.output
    assert not out.exists()


def test_adapter_is_applied(tiny_lm, shared_data, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm),
                           LoraConfig(r=2, lora_alpha=8, target_modules=["down_proj"], init_lora_weights=False))
    adapter = tmp_path / "my-adapter"
    model.save_pretrained(adapter)
    out = tmp_path / "out"
    result = invoke(eval_args("--adapter", adapter, "--base", "--temperature", "0", "--benchmarks", "gsm8k",
                              "-o", out, data=shared_data))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "my-adapter" / "summary.json").read_text())
    assert summary["setup"] == "lora" and summary["adapter"] == str(adapter) and summary["lora_rank"] == 2
    texts = [[s["text"] for line in jsonl(out / label / "seed-0" / "gsm8k.jsonl") for s in line["samples"]]
             for label in ("base", "my-adapter")]
    assert texts[0] != texts[1]


def make_run(root, tiny_lm, shared_data):
    run = root / "runs" / "tiny" / "problems" / "steering" / "seed-0"
    (run / "final").mkdir(parents=True)
    settings = build_settings([Layer({
        "model": {"name": str(tiny_lm)}, "data": {"dataset": "problems.jsonl"},
        "eval": {"benchmarks": ["gsm8k"], "data_dir": str(shared_data), "seeds": [0, 1], "limit": 2,
                 "max_new_tokens": 6},
        "train": {"grader_workers": 0}, "output": {"output_dir": str(run)},
    }, "test")])
    (run / "settings.yaml").write_text(settings.to_yaml())
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    save_vectors(run / "final" / "vectors.safetensors", 0.5 * torch.randn(2, 64), base_model=str(tiny_lm),
                 dataset="problems.jsonl", step=1)
    return run


def test_latest_run_evaluates_base_greedy_and_trained_sampled(tiny_lm, shared_data, tmp_path, monkeypatch):
    run = make_run(tmp_path, tiny_lm, shared_data)
    monkeypatch.chdir(tmp_path)
    result = invoke(["eval"])
    assert result.exit_code == 0, result.output
    assert f"most recent training run: {run.relative_to(tmp_path)} (final)" in result.output
    base = json.loads((run / "eval" / "base" / "summary.json").read_text())
    final = json.loads((run / "eval" / "final" / "summary.json").read_text())
    assert (base["setup"], base["temperature"], base["seeds"]) == ("base", 0.0, [0])
    assert (final["setup"], final["temperature"], final["seeds"]) == ("steering", 1.0, [0, 1])
    assert (final["run"], final["checkpoint"], final["train_dataset"]) == (str(run), "final", "problems.jsonl")
    assert not (run / "eval" / "base" / "seed-1").exists()
    lines = jsonl(run / "eval" / "final" / "seed-1" / "gsm8k.jsonl")
    assert all(s["length"] <= 6 for line in lines for s in line["samples"])  # the run's eval settings
    header = next(line for line in result.stdout.splitlines() if "Benchmark" in line)
    assert header.index("base") < header.index("final")
    assert "greedy" in result.stdout

    again = invoke(["eval", str(run / "final"), "--no-base"])
    assert again.exit_code == 0, again.output
    assert "final · GSM8K · seed 1: finished earlier, skipped" in again.output
    assert "base" not in again.stdout.split("Benchmark")[1].splitlines()[0]


def test_greedy_forces_one_sample_and_one_seed(tiny_lm, shared_data, tmp_path):
    out = tmp_path / "out"
    result = invoke(eval_args("--temperature", "0", "--samples", "3", "--seeds", "0,1", "--benchmarks", "aime24",
                              "-o", out, model=tiny_lm, data=shared_data))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and summary["benchmarks"]["aime24"]["samples"] == 1
    assert summary["benchmarks"]["aime24"]["metric"] == "pass@1"
    assert not (out / "seed-1").exists()
    assert "greedy" in result.stdout


@pytest.mark.parametrize("extra,message", [
    (["--benchmarks", "gsm8kk"], "did you mean 'gsm8k'"),
    (["--benchmarks", "gsm8k", "--data-dir", "/no/such/dir"], "/no/such/dir does not exist"),
    (["--vectors", "v.safetensors", "--adapter", "a"], "--vectors and --adapter together"),
])
def test_bad_requests_fail_in_one_line_and_write_nothing(tiny_lm, tmp_path, extra, message):
    out = tmp_path / "out"
    result = invoke(["eval", "--model", tiny_lm, "-o", out, *extra])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_run_that_is_not_a_run_and_no_run_found(tmp_path, monkeypatch):
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("hi")
    result = invoke(["eval", stray])
    assert result.exit_code == 2 and "not a steer training run" in result.output
    monkeypatch.chdir(tmp_path)
    result = invoke(["eval"])
    assert result.exit_code == 2 and "no runs/ directory here" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stray"]


def test_overwrite_refuses_a_directory_that_is_not_an_evaluation(tiny_lm, shared_data, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("keep")
    result = invoke(eval_args("--benchmarks", "gsm8k", "-o", out, "--overwrite", model=tiny_lm, data=shared_data))
    assert result.exit_code == 2 and "not a steer evaluation" in result.output
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_demo_benchmark_and_local_files(tmp_path, monkeypatch):
    import steer_cli.demo
    from steer_cli.evaluate.benchmarks import load_eval_benchmark, resolve_eval_benchmarks
    from steer_cli.evaluate.outputs import read_results

    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"problem": f"{a}+1?", "answer": str(a + 1)}) + "\n"
                                                 for a in range(5)))
    monkeypatch.setattr(steer_cli.demo, "DEMO_DATA_DIR", tmp_path)
    assert resolve_eval_benchmarks(["demo,gsm8k", "Demo", "paper"])[:3] == ["demo", "gsm8k", "aime25"]
    demo = load_eval_benchmark("demo", data_dir=None, limit=3)
    assert (demo.name, demo.display, demo.default_samples, len(demo.problems)) == ("demo", "Demo", 1, 3)
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"q": "1+1?", "final": "2"}) + "\n")
    from steer_cli.data.records import FieldMap

    local = load_eval_benchmark(str(mine), data_dir=None, limit=None, fields=FieldMap.from_spec("problem=q,answer=final"))
    assert (local.name, local.problems[0].answer) == ("mine", "2")

    results = tmp_path / "r.jsonl"
    line = {"id": demo.problems[0].id, "samples": [{"correct": True}]}
    results.write_text(json.dumps(line) + "\n")
    assert read_results(results, demo.problems[:1], 1) == [[True]]
    assert read_results(results, demo.problems[:2], 1) is None  # fewer lines than problems: redo
    assert read_results(results, demo.problems[:1], 2) is None  # another sample count: redo


def test_full_checkpoint_of_a_run(tiny_lm, shared_data, tmp_path):
    import shutil

    from steer_cli.evaluate.targets import resolve_run

    run = make_run(tmp_path, tiny_lm, shared_data)
    (run / "final" / "vectors.safetensors").unlink()
    shutil.copytree(tiny_lm, run / "final" / "model")  # "trained" weights equal to the base: same greedy text
    assert resolve_run(run / "final" / "model") == (run, run / "final")
    result = invoke(["eval", run / "final" / "model", "--temperature", "0"])
    assert result.exit_code == 0, result.output
    full = json.loads((run / "eval" / "final" / "summary.json").read_text())
    assert (full["setup"], full["weights"], full["vectors"]) == ("full", str(run / "final" / "model"), None)
    texts = [[s["text"] for line in jsonl(run / "eval" / label / "seed-0" / "gsm8k.jsonl") for s in line["samples"]]
             for label in ("base", "final")]
    assert texts[0] == texts[1]


def test_a_lora_run_target_carries_its_rank(tmp_path):
    from steer_cli.evaluate.targets import plan_targets

    run = tmp_path / "run"
    (run / "final" / "adapter").mkdir(parents=True)
    (run / "final" / "adapter" / "adapter_config.json").write_text("{}")
    settings = build_settings([Layer({"model": {"name": "m"}, "setup": {"kind": "lora", "lora": {"rank": 1}},
                                      "output": {"output_dir": str(run)}}, "test")])
    base, trained = plan_targets(settings, run=run, checkpoint=run / "final")
    assert (base.setup, base.lora_rank) == ("base", None)
    assert (trained.setup, trained.lora_rank) == ("lora", 1)


def test_a_directory_of_runs_evaluates_each_run_and_the_base_once(tiny_lm, shared_data, tmp_path, monkeypatch):
    import shutil

    first = make_run(tmp_path, tiny_lm, shared_data)
    second = first.parent / "seed-1"
    shutil.copytree(first, second)
    save_vectors(second / "final" / "vectors.safetensors", 0.5 * torch.randn(2, 64), base_model=str(tiny_lm),
                 dataset="problems.jsonl", step=1)
    monkeypatch.chdir(tmp_path)
    result = invoke(["eval", "runs", "-o", tmp_path / "one"])
    assert result.exit_code == 2 and "--output-dir names one directory, but 2 runs" in result.output
    assert not (tmp_path / "one").exists()

    result = invoke(["eval", "runs"])
    assert result.exit_code == 0, result.output
    for run in (first, second):
        final = json.loads((run / "eval" / "final" / "summary.json").read_text())
        assert (final["run"], final["setup"]) == (str(run), "steering")
    assert (first / "eval" / "base" / "summary.json").exists()
    assert not (second / "eval" / "base").exists()  # same model and protocol: evaluated once
    header = next(line for line in result.stdout.splitlines() if line.startswith("Benchmark"))
    assert header.split() == ["Benchmark", "Metric", "base", "seed-0", "seed-1"]

    report = invoke(["report"])
    assert report.exit_code == 0, report.output
    t1 = report.stdout.split("Table 4")[0]
    assert "| Base " in t1 and "| Steering " in t1
