"""SIGKILL `steer train` during generation, during a checkpoint write and during an update; resume
each time with --resume; the final vectors equal an uninterrupted run's, bit for bit (CPU, same
seed). The kills come from STEER_FAULT (steer_cli/faults.py), so they land exactly there."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from demo_runs import train_demo as _train

from steer_cli.lock import LOCK_NAME
from steer_cli.train.checkpoint import list_checkpoints
from steer_cli.vectors.file import load_vectors


@pytest.fixture
def reference(uninterrupted_demo_run):
    """The final vectors of an uninterrupted run."""
    return load_vectors(uninterrupted_demo_run / "final" / "vectors.safetensors")[0]


def test_killed_three_times_and_resumed_equals_uninterrupted(tmp_path, reference):
    run = tmp_path / "run"
    killed = _train(run, fault="generate@3")  # rollouts of step 3 done, checkpoint-2 on disk
    assert killed.returncode == -signal.SIGKILL
    assert (run / "checkpoint-2").is_dir() and not (run / "final").exists()
    assert (run / LOCK_NAME).exists()  # left by the killed run; its lock died with it

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
    assert not (run / LOCK_NAME).exists()  # a run that ends removes its lock file


def _snapshot(path):
    # The lock file a killed run left behind is taken over (and removed) by the next command.
    return {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file() and p.name != LOCK_NAME}


def test_killed_before_its_first_checkpoint_and_requeued_with_resume(tmp_path, reference):
    """A requeue script runs the same command plus --resume: before the first checkpoint there is
    nothing to continue, so it starts over; a change of settings is still refused."""
    run = tmp_path / "run"
    killed = _train(run, fault="generate@2")  # step 1 logged, checkpoint-2 not reached
    assert killed.returncode == -signal.SIGKILL
    assert not list_checkpoints(run) and len((run / "metrics.jsonl").read_text().splitlines()) == 1

    before = _snapshot(run)
    changed = _train(run, "--resume", "--seed", "5")
    assert changed.returncode == 2 and "train.seed: 0 -> 5" in changed.stderr, changed.stderr
    assert _snapshot(run) == before

    done = _train(run, "--resume")
    assert done.returncode == 0, done.stderr
    resumed, meta = load_vectors(run / "final" / "vectors.safetensors")
    assert meta["step"] == 6
    assert torch.equal(resumed, reference)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
