"""SIGKILL `steer train` during generation, during a checkpoint write and during an update; resume
each time with --resume; the final vectors equal an uninterrupted run's, bit for bit (CPU, same
seed). The kills come from STEER_FAULT (steer_cli/faults.py), so they land exactly there."""

from __future__ import annotations

import signal

import torch
from demo_runs import train_demo as _train

from steer_cli.vectors import load_vectors


def test_killed_three_times_and_resumed_equals_uninterrupted(tmp_path, uninterrupted_demo_run):
    reference, _ = load_vectors(uninterrupted_demo_run / "final" / "vectors.safetensors")

    run = tmp_path / "run"
    killed = _train(run, fault="generate@3")  # rollouts of step 3 done, checkpoint-2 on disk
    assert killed.returncode == -signal.SIGKILL
    assert (run / "checkpoint-2").is_dir() and not (run / "final").exists()
    assert (run / ".steer.lock").exists()  # left by the killed run; its lock died with it

    killed = _train(run, "--resume", fault="checkpoint@4")  # mid-write of checkpoint-4
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(run.glob(".checkpoint-4.*.tmp")) and not (run / "checkpoint-4").exists()
    load_vectors(run / "checkpoint-2" / "vectors.safetensors")  # the previous one is intact

    killed = _train(run, "--resume", fault="update@5")  # gradients computed, no optimizer step
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (run / "checkpoint-4").is_dir() and not list(run.glob(".checkpoint-*.tmp"))

    done = _train(run, "--resume")
    assert done.returncode == 0, done.stderr
    resumed, meta = load_vectors(run / "final" / "vectors.safetensors")
    assert meta["step"] == 6
    assert torch.equal(resumed, reference)
    steps = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 6
    assert not (run / ".steer.lock").exists()  # a run that ends removes its lock file
