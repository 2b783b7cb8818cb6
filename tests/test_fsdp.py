"""Sharded full fine-tuning (FSDP2, ``--fsdp``) on CPU with gloo: two processes end with the
weights one unsharded process reaches on the same global batch; a run killed after a checkpoint
and resumed equals the uninterrupted one; checkpoints are gathered (the unsharded layout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from cli_helpers import one_line_error
from safetensors.torch import load_file
from typer.testing import CliRunner

from steer_cli.cli import _register, app

_register()
# The demo model with its demo preset (demo/demo/full); 48 new tokens so that some answers get boxed
# and graded; micro-batches of one prompt's 4 completions, as each of two processes holds, so that one
# process sums the same micro-batches as two.
ARGS = ["train", "--setup", "full", "--max-steps", "3", "--save-every", "2", "--prompts-per-step", "2",
        "--num-generations", "4", "--max-new-tokens", "48", "--lr", "1e-3", "--set", "rollout.batch_prompts=1",
        "--set", "train.grader_workers=0", "--set", "train.warmup_ratio=0", "--set", "train.micro_batch_size=4"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(cmd, cwd, fault=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("STEER_FAULT", None)
    if fault:
        env["STEER_FAULT"] = fault
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _weights(run):
    return load_file(str(run / "final" / "model" / "model.safetensors"))


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_sharded_processes_equal_one_unsharded_and_resume_is_exact(tmp_path):
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    done = _run([sys.executable, "-m", "steer_cli", *ARGS, "--output-dir", str(one)], tmp_path)
    assert done.returncode == 0, done.stderr
    done = _run([*TORCHRUN, "-m", "steer_cli", *ARGS, "--fsdp", "--output-dir", str(two)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr

    m1, m2 = _metrics(one), _metrics(two)
    assert [m["gen_tokens"] for m in m1] == [m["gen_tokens"] for m in m2]  # the same samples
    assert any(m["grad_norm"] > 0 for m in m1)  # something was learned
    for a, b in zip(m1, m2):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(a["loss"]))
    # Each of two processes holds half of the parameters, gradients and AdamW state (shards are
    # padded to equal sizes, hence the slack).
    whole, shard = m1[-1]["state_bytes_per_process"], m2[-1]["state_bytes_per_process"]
    assert whole["total"] == 4 * whole["parameters"]  # float32 weights + gradients + 2 Adam moments
    assert 0.5 * whole["total"] <= shard["total"] <= 0.51 * whole["total"]
    w1, w2 = _weights(one), _weights(two)
    assert set(w1) == set(w2)  # gathered: the unsharded layout, a tied head stored once
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
    config = json.loads((two / "final" / "model" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]  # not the FSDP wrapper class

    killed = _run([*TORCHRUN, "-m", "steer_cli", *ARGS, "--fsdp", "--output-dir", str(resumed)], tmp_path,
                  fault="update@3")
    assert killed.returncode != 0 and (resumed / "checkpoint-2").is_dir() and not (resumed / "final").exists()
    optim = torch.load(resumed / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert optim["fsdp"] is True
    done = _run([*TORCHRUN, "-m", "steer_cli", *ARGS, "--fsdp", "--resume", "--output-dir", str(resumed)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    w3 = _weights(resumed)
    for k in w2:
        assert torch.equal(w3[k], w2[k]), k
    assert len(_metrics(resumed)) == 3

    # Resuming without --fsdp is a settings change that is refused, not a silent format mix-up.
    again = _run([sys.executable, "-m", "steer_cli", *ARGS, "--resume", "--output-dir", str(resumed)], tmp_path)
    assert again.returncode == 2 and "train.fsdp" in again.stderr


def test_fsdp_with_steering_or_lora_is_a_one_line_error(tmp_path):
    for setup in ("steering", "lora"):
        result = CliRunner().invoke(app, ["train", "--setup", setup, "--fsdp", "--output-dir", str(tmp_path / setup)])
        one_line_error(result, "--fsdp", "drop --fsdp")
        assert not (tmp_path / setup).exists()



def test_vllm_sync_of_a_sharded_model_sends_whole_weights(tmp_path):
    """The colocated vLLM engine of an FSDP run gets every parameter whole (gathered), named as
    in the unsharded model."""
    from tiny_models import make_model

    from steer_cli.patching.setups import prepare_setup
    from steer_cli.rollout.factory import VLLMTrainingBackend
    from steer_cli.train.fsdp import shard_model

    class Engine:
        def __init__(self):
            self.loaded = []

        def load_weights(self, named):
            self.loaded.append(dict(named))

    reference = make_model("qwen2")
    expected = {n: p.detach().clone() for n, p in reference.named_parameters()}
    trainable = prepare_setup(make_model("qwen2"), "full")
    try:
        shard_model(trainable.model, torch.float32, torch.device("cpu"))  # a process group of one
        assert any(type(p).__name__ == "DTensor" for p in trainable.model.parameters())
        engine = Engine()
        VLLMTrainingBackend(engine, trainable)  # syncs once at start
    finally:  # later tests in this process must not find a process group
        torch.distributed.destroy_process_group()
    sent = engine.loaded[0]
    assert set(sent) == set(expected)
    for name, tensor in sent.items():
        assert type(tensor) is torch.Tensor, name
        torch.testing.assert_close(tensor, expected[name])
