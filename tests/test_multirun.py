"""Several steering runs in one `steer train` job (--sweep, repeated --preset): each run equals the
same run trained alone, bit for bit on CPU; kills, stop signals and --resume act on every run at
one step; a finished run is not trained again; refusals name the key at fault."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from demo_runs import ARGS, demo_env

from steer_cli.errors import SteerError
from steer_cli.lock import LOCK_NAME
from steer_cli.train.checkpoint import list_checkpoints
from steer_cli.train.sweep import (
    EACH,
    RunSpec,
    assign_output_dirs,
    check_compatible,
    expand_runs,
    parse_sweep,
)
from steer_cli.vectors.file import load_vectors


def _job(out, *extra, fault=None, args=ARGS):
    return subprocess.run([sys.executable, "-m", "steer_cli", *args, "--output-dir", str(out), *extra],
                          env=demo_env(fault), capture_output=True, text=True, timeout=900)


def _vectors(run):
    return load_vectors(run / "final" / "vectors.safetensors")


@pytest.fixture(scope="module")
def two_seed_job(tmp_path_factory):
    """The demo of demo_runs.ARGS as a job of two runs, seed 1 first: seed 0 is the bank's second
    entry and shares every rollout batch with seed 1."""
    out = tmp_path_factory.mktemp("job2") / "sweep"
    done = _job(out, "--sweep", "train.seed=1,0")
    assert done.returncode == 0, done.stderr
    return out


def test_a_run_in_a_job_equals_the_run_alone(two_seed_job, uninterrupted_demo_run):
    alone, meta_alone = _vectors(uninterrupted_demo_run)  # today's `steer train`, one run
    in_job, meta = _vectors(two_seed_job / "seed-0")
    assert torch.equal(in_job, alone)
    assert meta["seed"] == 0 and meta_alone["seed"] == 0
    # the same samples at every step, not just the same end point
    steps = [json.loads(x) for x in (two_seed_job / "seed-0" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (uninterrupted_demo_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward_mean"] for m in steps] == [m["reward_mean"] for m in ref]
    assert [m["gen_tokens"] for m in steps] == [m["gen_tokens"] for m in ref]
    assert all(m["runs_in_job"] == 2 for m in steps)
    other, _ = _vectors(two_seed_job / "seed-1")
    assert not torch.equal(other, in_job)  # its own seed: its own data order and samples
    for seed in (0, 1):
        run = two_seed_job / f"seed-{seed}"
        assert f"seed: {seed}" in (run / "settings.yaml").read_text()
        assert [s for s, _ in list_checkpoints(run)] == [2, 4]
        assert not (run / LOCK_NAME).exists()


def test_three_runs_killed_and_stopped_resume_to_the_uninterrupted_result(tmp_path, two_seed_job,
                                                                         uninterrupted_demo_run):
    out = tmp_path / "sweep"
    stopped = _job(out, "--sweep", "train.seed=0,1,2", fault="update@3:term")
    assert stopped.returncode == 75, stopped.stderr
    for seed in (0, 1, 2):  # SIGTERM: every run saved at the same step
        assert [s for s, _ in list_checkpoints(out / f"seed-{seed}")] == [2, 3]
    killed = _job(out, "--sweep", "train.seed=0,1,2", "--resume", fault="update@5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = _job(out, "--sweep", "train.seed=0,1,2", "--resume")
    assert done.returncode == 0, done.stderr
    assert torch.equal(_vectors(out / "seed-0")[0], _vectors(uninterrupted_demo_run)[0])
    assert torch.equal(_vectors(out / "seed-1")[0], _vectors(two_seed_job / "seed-1")[0])  # K = 3 and K = 2 agree
    for seed in (0, 1, 2):
        assert len((out / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()) == 6

    again = _job(out, "--sweep", "train.seed=0,1,2", "--resume")  # a requeue after the end
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("has finished (") == 3 and "nothing to do" in again.stderr


def test_a_run_a_checkpoint_ahead_goes_back_to_the_common_step(tmp_path, two_seed_job):
    """A kill between two runs' saves leaves one run a checkpoint ahead: --resume puts it back
    at the step every run reached, and the job recomputes the same result."""
    out = tmp_path / "sweep"
    shutil.copytree(two_seed_job, out)
    for seed in (0, 1):
        shutil.rmtree(out / f"seed-{seed}" / "final")
        lines = (out / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()
        (out / f"seed-{seed}" / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")
    shutil.rmtree(out / "seed-1" / "checkpoint-4")  # seed 1 (saved first) at 2, seed 0 at 4
    done = _job(out, "--sweep", "train.seed=1,0", "--resume")
    assert done.returncode == 0, done.stderr
    assert "seed-0: removed checkpoint-4" in done.stderr
    for seed in (0, 1):
        assert torch.equal(_vectors(out / f"seed-{seed}")[0], _vectors(two_seed_job / f"seed-{seed}")[0])


def _refused(*args):
    done = subprocess.run([sys.executable, "-m", "steer_cli", "train", *args, "--print-settings"],
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_refusals_name_the_key():
    assert "setup.kind = lora" in _refused("--sweep", "train.seed=0,1", "--setup", "lora")
    assert "may differ only in" in _refused("--sweep", "rollout.temperature=0.5,1")
    assert "unknown setting" in _refused("--sweep", "train.sed=0,1")
    assert "--seed both set train.seed" in _refused("--sweep", "train.seed=0,1", "--seed", "3")
    assert "both write to" in _refused("--sweep", "train.lr=0.01,0.03")  # default paths collide
    line = _refused("--preset", "demo/demo/steering", "--preset", "demo/demo/lora")
    assert "lora" in line and "one copy of the model" in line


def test_sweep_values_and_output_dirs(tmp_path):
    assert parse_sweep("train.lr=1e-3,3e-3").values == (1e-3, 3e-3)
    assert parse_sweep("setup.steering.layers=[0,1],2").values == ([0, 1], [2])
    assert parse_sweep("setup.steering.layers=each").values == (EACH,)
    with pytest.raises(SteerError, match="given twice"):
        parse_sweep("train.seed=1,1")
    with pytest.raises(SteerError, match="KEY=V1"):
        parse_sweep("train.seed")

    from steer_cli.cli.common import settings_from_cli

    def build(preset, top):
        return settings_from_cli(preset=preset, config=None, sets=None, flags={}, top=top)

    runs = expand_runs([], [parse_sweep("train.lr=0.01,0.03"), parse_sweep("train.seed=0,1")], build,
                       num_layers=lambda s: 4, preset_exists=lambda name: False)
    assert [r.name for r in runs] == ["lr-0.01/seed-0", "lr-0.01/seed-1", "lr-0.03/seed-0", "lr-0.03/seed-1"]
    assert [(r.settings.train.lr, r.settings.train.seed) for r in runs] == [(0.01, 0), (0.01, 1), (0.03, 0), (0.03, 1)]
    check_compatible(runs)
    dirs = assign_output_dirs(runs, str(tmp_path), lambda s: tmp_path / "default")
    assert dirs[1] == tmp_path / "lr-0.01" / "seed-1"

    other = RunSpec(build(None, None), "other")
    other.settings.rollout.num_generations = 4
    with pytest.raises(SteerError, match="rollout.num_generations differs between runs"):
        check_compatible([runs[0], other])


def test_each_layer_takes_its_per_layer_preset():
    """--sweep setup.steering.layers=each on a model preset with per-layer presets: each run is
    that layer's preset, with the learning rate the reference used for it."""
    from steer_cli.cli.common import settings_from_cli
    from steer_cli.presets import preset_exists

    preset = "llama3.1-8b-instruct/deepscaler/steering"

    def build(name, top):
        return settings_from_cli(preset=name, config=None, sets=None, flags={}, top=top)

    runs = expand_runs([preset], [parse_sweep("setup.steering.layers=each")], build,
                       num_layers=lambda s: 32, preset_exists=preset_exists)
    assert len(runs) == 32 and runs[5].name == "layer-5"
    assert runs[5].settings.preset == f"{preset}-layer-5"
    assert runs[5].settings.setup.steering.layers == [5]
    lrs = {r.settings.train.lr for r in runs}
    assert lrs == {build(f"{preset}-layer-{k}", None).train.lr for k in range(32)} and len(lrs) > 1
    check_compatible(runs)

    demo = expand_runs([], [parse_sweep("setup.steering.layers=each")], build, num_layers=lambda s: 4,
                       preset_exists=preset_exists)
    assert [r.settings.setup.steering.layers for r in demo] == [[0], [1], [2], [3]]


def test_two_processes_train_a_job_as_one_does(tmp_path, two_seed_job):
    """torchrun: every run's prompts are sharded over the processes; the samples are the same as
    in one process, the vectors agree up to the order of the gradient sum across processes."""
    out = tmp_path / "sweep"
    env = dict(demo_env(), PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "steer_cli", *ARGS, "--sweep", "train.seed=1,0", "--output-dir", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 process(es)" in done.stderr
    for seed in (0, 1):
        one = [json.loads(x) for x in (two_seed_job / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()]
        two = [json.loads(x) for x in (out / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()]
        assert [m["gen_tokens"] for m in two] == [m["gen_tokens"] for m in one]
        torch.testing.assert_close(_vectors(out / f"seed-{seed}")[0], _vectors(two_seed_job / f"seed-{seed}")[0],
                                   rtol=1e-4, atol=1e-6)


def test_report_reads_a_sweep_as_separate_runs(tmp_path, two_seed_job):
    """`steer eval` / `steer report` on a sweep's directory: each run is an ordinary run, and the
    Steering cell pools the sweep's seeds as it pools separately trained runs."""
    sweep = tmp_path / "sweep"
    shutil.copytree(two_seed_job, sweep)
    run = subprocess.run([sys.executable, "-m", "steer_cli", "eval", str(sweep), "--limit", "8"],
                         cwd=tmp_path, env=demo_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    accuracy = {}
    for seed in (0, 1):
        summary = json.loads((sweep / f"seed-{seed}" / "eval" / "final" / "summary.json").read_text())
        (bench,) = summary["benchmarks"].values()
        accuracy[seed] = bench["mean"]
    text = subprocess.run([sys.executable, "-m", "steer_cli", "report", str(sweep)], cwd=tmp_path, env=demo_env(),
                          capture_output=True, text=True, timeout=300).stdout
    assert "seed-0" in text and "seed-1" in text  # the training-runs table lists both
    (row,) = [line for line in text.splitlines() if "| Steering" in line][:1]
    assert f"{100 * (accuracy[0] + accuracy[1]) / 2:.1f}" in row, (row, accuracy)


def test_single_layer_runs_in_a_job_equal_each_alone(tmp_path):
    """--sweep setup.steering.layers: the job's hooks sit on the union of the runs' layers and each
    row adds only its run's layer; a run equals the single-layer run trained alone."""
    job = _job(tmp_path / "layers", "--sweep", "setup.steering.layers=[1],[3]")
    assert job.returncode == 0, job.stderr
    alone = _job(tmp_path / "alone", "--set", "setup.steering.layers=[3]")
    assert alone.returncode == 0, alone.stderr
    in_job, meta = _vectors(tmp_path / "layers" / "layer-3")
    assert meta["layers"] == [3]
    assert torch.equal(in_job, _vectors(tmp_path / "alone")[0])
    assert in_job[[0, 1, 2]].abs().sum() == 0 and in_job[3].abs().sum() > 0
