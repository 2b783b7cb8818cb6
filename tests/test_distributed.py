"""Two CPU processes (gloo, under torchrun) train exactly what one process trains on the same
global batch: prompts are sharded, the loss is normalised by the global token count, and the
gradients are summed, so the vectors agree (up to float summation order)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from steer_cli.vectors.file import load_vectors

ARGS = ["train", "--max-steps", "3", "--prompts-per-step", "2", "--num-generations", "4", "--lr", "0.03",
        "--set", "rollout.batch_prompts=1", "--set", "train.grader_workers=0", "--set", "train.warmup_ratio=0"]


def _run(cmd, tmp_path):
    # One thread per process in both runs, so sampling sees the same numerics.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "steer_cli", *ARGS, "--output-dir", str(one)], tmp_path)
    out = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "steer_cli", *ARGS, "--output-dir", str(two)], tmp_path)
    assert "2 process(es)" in out.stderr
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward_mean"] for m in m1] == [m["reward_mean"] for m in m2]  # the same samples
    assert [m["gen_tokens"] for m in m1] == [m["gen_tokens"] for m in m2]
    for a, b in zip(m1, m2):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(a["loss"]))
    v1, _ = load_vectors(one / "final" / "vectors.safetensors")
    v2, _ = load_vectors(two / "final" / "vectors.safetensors")
    assert v1.abs().sum() > 0
    torch.testing.assert_close(v2, v1, rtol=1e-4, atol=1e-6)
