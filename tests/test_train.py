"""steer train end to end on a tiny model: files, resume, setups, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from cli_helpers import interrupted_at_step
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.vectors.file import load_vectors

_register()
runner = CliRunner()


def train_args(model, data, out, *extra):
    return ["train", "--model", str(model), "--dataset", str(data), "--output-dir", str(out),
            "--prompts-per-step", "2", "--num-generations", "3", "--max-new-tokens", "6",
            "--set", "train.micro_batch_size=4", "--set", "train.grader_workers=0", *extra]


def invoke(args):
    result = runner.invoke(app, args)
    return result


def snapshot(path):
    return {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def test_end_to_end_writes_every_file(tiny_lm, tiny_problems, tmp_path, coin_grader):
    out = tmp_path / "run"
    result = invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "4", "--save-every", "2", "--lr", "0.05"))
    assert result.exit_code == 0, result.output
    assert (out / "settings.yaml").exists()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    for key in ("reward_mean", "reward_std", "accuracy", "frac_same_reward_groups", "completion_len_mean",
                "completion_len_max", "frac_truncated", "loss", "grad_norm", "lr", "vector_norms",
                "time_generate", "time_grade", "time_update", "time_sync", "tokens_per_second"):
        assert key in lines[0], key
    assert len(lines[0]["vector_norms"]) == 2
    assert (out / "checkpoint-2" / "vectors.safetensors").exists()
    assert (out / "checkpoint-2" / "optimizer.pt").exists()
    vectors, meta = load_vectors(out / "final" / "vectors.safetensors")
    assert vectors.shape == (2, 64) and vectors.abs().sum() > 0
    assert meta["step"] == 4 and meta["setup"] == "steering" and meta["base_model"] == str(tiny_lm)
    assert lines[-1]["vector_norms"][0] == pytest.approx(float(vectors[0].norm()), rel=1e-5)


def test_existing_output_dir_is_refused_without_resume_or_overwrite(tiny_lm, tiny_problems, tmp_path, coin_grader):
    out = tmp_path / "run"
    assert invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "1")).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    result = invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "1"))
    assert result.exit_code == 2
    assert "exists and is not empty" in result.output and "--resume" in result.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    result = invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "1", "--overwrite"))
    assert result.exit_code == 0, result.output


def test_overwrite_refuses_a_directory_that_is_not_a_run(tiny_lm, tiny_problems, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    result = invoke(train_args(tiny_lm, tiny_problems, out, "--overwrite"))
    assert result.exit_code == 2 and "not a steer run directory" in result.output
    assert (out / "thesis.tex").read_text() == "do not delete"


def test_resume_continues_exactly(tiny_lm, tiny_problems, tmp_path, coin_grader, monkeypatch):
    """A run stopped after its step-2 checkpoint and resumed ends with the same vectors."""
    common = ("--max-steps", "4", "--save-every", "2", "--lr", "0.05", "--seed", "3")
    full = tmp_path / "full"
    assert invoke(train_args(tiny_lm, tiny_problems, full, *common)).exit_code == 0


    part = tmp_path / "part"
    with interrupted_at_step(monkeypatch, 2):
        assert invoke(train_args(tiny_lm, tiny_problems, part, *common)).exit_code != 0
    assert not (part / "final").exists() and (part / "checkpoint-2").exists()
    result = invoke(train_args(tiny_lm, tiny_problems, part, *common, "--resume"))
    assert result.exit_code == 0, result.output
    a, _ = load_vectors(full / "final" / "vectors.safetensors")
    b, _ = load_vectors(part / "final" / "vectors.safetensors")
    assert torch.equal(a, b)
    steps = [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_with_different_settings_lists_the_differences(tiny_lm, tiny_problems, tmp_path, coin_grader):
    out = tmp_path / "run"
    assert invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "2", "--save-every", "1")).exit_code == 0
    result = invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "2", "--resume", "--lr", "0.5",
                               "--seed", "9"))
    assert result.exit_code == 2
    assert "train.lr: 0.001 -> 0.5" in result.output and "train.seed: 0 -> 9" in result.output


def test_resume_starts_a_run_in_a_new_or_empty_directory(tiny_lm, tiny_problems, tmp_path, coin_grader):
    """Requeue scripts pass --resume from the very first launch."""
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty"):
        result = invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "1", "--resume"))
        assert result.exit_code == 0, result.output
        assert (out / "final" / "vectors.safetensors").exists()
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_without_checkpoint_refuses_other_files_and_finished_runs(tiny_lm, tiny_problems, tmp_path, coin_grader):
    import shutil

    out = tmp_path / "run"
    assert invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "1")).exit_code == 0  # final/, no checkpoint
    before = snapshot(out)
    result = invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "1", "--resume"))
    assert result.exit_code == 2 and "has finished (final/)" in result.output and "--overwrite" in result.output
    assert snapshot(out) == before

    shutil.rmtree(out / "final")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    result = invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "1", "--resume"))
    assert result.exit_code == 2 and "not the run's (notes.txt)" in result.output
    assert snapshot(out) == before

    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("do not delete")
    result = invoke(train_args(tiny_lm, tiny_problems, folder, "--resume"))
    assert result.exit_code == 2 and "no settings.yaml" in result.output


def test_setup_alone_keeps_the_demo():
    import yaml

    for setup, lr in (("steering", 3e-2), ("lora", 1e-3), ("full", 1e-4)):
        result = invoke(["train", "--setup", setup, "--print-settings"])
        assert result.exit_code == 0, result.output
        s = yaml.safe_load(result.stdout)
        assert s["preset"] == f"demo/demo/{setup}" and s["setup"]["kind"] == setup and s["train"]["lr"] == lr
        assert (s["model"]["name"], s["data"]["dataset"]) == ("demo", "demo")
        assert (s["train"]["max_steps"], s["train"]["prompts_per_step"], s["rollout"]["num_generations"],
                s["rollout"]["max_new_tokens"]) == (50, 8, 8, 64)
        assert s["model"]["gradient_checkpointing"] is False


@pytest.mark.parametrize("setup,expected", [("lora", "adapter/adapter_model.safetensors"),
                                            ("full", "model/model.safetensors")])
def test_lora_and_full_setups(tiny_lm, tiny_problems, tmp_path, coin_grader, setup, expected):
    out = tmp_path / setup
    result = invoke(train_args(tiny_lm, tiny_problems, out, "--setup", setup, "--max-steps", "2",
                               "--save-every", "1", "--lr", "1e-3"))
    assert result.exit_code == 0, result.output
    assert (out / "final" / expected).exists()
    assert (out / "checkpoint-1" / expected).exists()
    m = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "vector_norms" not in m[0] and math.isfinite(m[-1]["grad_norm"])


def test_kl_term_is_logged(tiny_lm, tiny_problems, tmp_path, coin_grader):
    out = tmp_path / "kl"
    result = invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "2", "--lr", "0.5",
                               "--set", "train.kl_coef=0.1", "--set", "train.warmup_ratio=0"))
    assert result.exit_code == 0, result.output
    m = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert m[0]["kl"] == 0.0  # the vectors start at zero: policy == reference
    assert m[1]["kl"] > 0.0


def test_non_finite_update_is_skipped_and_counted(tiny_lm, tiny_problems, tmp_path, coin_grader, monkeypatch):
    from steer_cli.train import batch

    original = batch.completion_logprobs
    calls = {"n": 0}

    def poisoned(model, packed, temperature=1.0, chunk_tokens=0):
        calls["n"] += 1
        out = original(model, packed, temperature, chunk_tokens)
        return out * float("nan") if calls["n"] == 1 else out

    monkeypatch.setattr(batch, "completion_logprobs", poisoned)
    out = tmp_path / "nan"
    result = invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "3", "--lr", "0.05",
                               "--set", "train.micro_batch_size=64"))
    assert result.exit_code == 0, result.output
    m = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert m[0]["skipped_nonfinite"] == 1 and m[0]["nonfinite_total"] == 1
    assert m[1]["skipped_nonfinite"] == 0
    vectors, _ = load_vectors(out / "final" / "vectors.safetensors")
    assert torch.isfinite(vectors).all()


def test_too_many_non_finite_updates_stop_the_run(tiny_lm, tiny_problems, tmp_path, coin_grader, monkeypatch):
    from steer_cli.train import batch

    original = batch.completion_logprobs
    monkeypatch.setattr(batch, "completion_logprobs", lambda m, p, t=1.0, c=0: original(m, p, t, c) * float("nan"))
    out = tmp_path / "diverged"
    result = invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "5",
                               "--set", "train.max_nonfinite_steps=2"))
    assert result.exit_code == 2
    assert "training diverged: 2 updates in a row" in result.output and "--lr" in result.output
    assert not (out / "final").exists()


@pytest.mark.parametrize("args,message", [
    (["--preset", "qwen2.5-math-7b/deepscaler/stering"], "did you mean qwen2.5-math-7b/deepscaler/steering"),
    (["--model", "/no/such/model"], "model directory /no/such/model does not exist"),
    (["--num-generations", "1"], "use at least 2"),
    (["--lr", "0"], "train.lr = 0.0 (--lr): Input should be greater than 0"),
    (["--lr", "-1e-3"], "greater than 0"),
])
def test_bad_input_is_one_line_exit_2(tiny_lm, tiny_problems, tmp_path, args, message):
    base = ["train", "--model", str(tiny_lm), "--dataset", str(tiny_problems), "--output-dir", str(tmp_path / "o")]
    result = invoke(base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_dataset_without_usable_rows(tiny_lm, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x", "answer": ""}\n{"question": "y"}\n')
    result = invoke(["train", "--model", str(tiny_lm), "--dataset", str(bad), "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no usable" in result.output.lower()


def test_tensorboard_tracker_writes_the_metrics(tiny_lm, tiny_problems, tmp_path, coin_grader):
    pytest.importorskip("tensorboard")  # the dev extra installs it
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    out = tmp_path / "tb"
    result = invoke(train_args(tiny_lm, tiny_problems, out, "--max-steps", "2", "--lr", "0.05",
                               "--set", "train.trackers=[tensorboard]"))
    assert result.exit_code == 0, result.output
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged: dict[str, dict[int, float]] = {}
    hparams = {}
    for path in out.rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if v.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    hparams = data.session_start_info.hparams
                elif v.metadata.plugin_data.plugin_name == "scalars" or v.HasField("simple_value"):
                    value = v.simple_value if v.HasField("simple_value") else tensor_util.make_ndarray(v.tensor).item()
                    logged.setdefault(v.tag, {})[event.step] = value
    for key in ("reward_mean", "accuracy", "loss", "grad_norm", "lr", "completion_len_mean"):
        assert logged.get(key) == pytest.approx({m["step"]: m[key] for m in metrics}, rel=1e-6), key
    # the resolved settings, as hyperparameters with dotted keys
    assert hparams["train.lr"].number_value == 0.05 and hparams["setup.kind"].string_value == "steering"
    assert hparams["eval.seeds"].string_value == "[0]"


def test_tracker_config_is_flat_and_scalar():
    from steer_cli.settings import Settings
    from steer_cli.train.run import tracker_config

    config = tracker_config(Settings())
    assert config["train.lr"] == Settings().train.lr and config["setup.steering.layers"] is None
    assert config["prompt.stop"] == "[]" and config["rollout.vllm.tensor_parallel_size"] == 1
    assert all(v is None or isinstance(v, (int, float, str, bool)) for v in config.values())
