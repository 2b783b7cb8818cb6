"""SIGTERM / SIGUSR1 (what SLURM, Kubernetes and torchrun's agent send before SIGKILL): `steer train`
drops the step in flight before its update or finishes it after, writes a checkpoint of the state
after its last complete step, and exits with code 75; `--resume` then ends where an uninterrupted
run ends, bit for bit. The signals come from STEER_FAULT (steer_cli/faults.py): a process sends
itself the signal at an exact point, so nothing here depends on timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from demo_runs import demo_env, train_demo

from steer_cli.preempt import EXIT_PREEMPTED
from steer_cli.vectors.file import load_vectors


def _stopped_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("stopped:")]


def _steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _complete(checkpoint):
    """A checkpoint --resume can read: every file there and readable."""
    load_vectors(checkpoint / "vectors.safetensors")
    torch.load(checkpoint / "optimizer.pt", weights_only=True)
    torch.load(checkpoint / "rng.pt", weights_only=True)
    return json.loads((checkpoint / "trainer_state.json").read_text())["step"]


def test_sigterm_and_sigusr1_save_the_last_complete_step_and_resume_equals_uninterrupted(
        tmp_path, uninterrupted_demo_run):
    reference, _ = load_vectors(uninterrupted_demo_run / "final" / "vectors.safetensors")
    run = tmp_path / "run"

    # SIGTERM once step 4's rollouts are done: step 4 is dropped, the state after step 3 saved.
    # A second SIGTERM arrives while checkpoint-3 is being written: it is ignored, not a corruption.
    stopped = train_demo(run, fault="generate@4:term,checkpoint@3:term")
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr
    assert "Traceback" not in stopped.stderr
    (line,) = _stopped_lines(stopped)
    assert "SIGTERM during step 4" in line and "checkpoint-3 saved" in line and "--resume" in line
    assert _complete(run / "checkpoint-3") == 3 and _complete(run / "checkpoint-2") == 2
    assert _steps(run) == [1, 2, 3]
    assert not list(run.glob(".checkpoint-*")) and not (run / "final").exists()
    assert not (run / ".steer.lock").exists()

    # SIGUSR1 after step 5's gradients, before its optimizer step: step 5 is finished, then saved.
    stopped = train_demo(run, "--resume", fault="update@5:usr1")
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr
    (line,) = _stopped_lines(stopped)
    assert "SIGUSR1" in line and "checkpoint-5 saved (after step 5 of 6)" in line
    assert _complete(run / "checkpoint-5") == 5 and _steps(run) == [1, 2, 3, 4, 5]

    done = train_demo(run, "--resume")
    assert done.returncode == 0, done.stderr
    resumed, meta = load_vectors(run / "final" / "vectors.safetensors")
    assert meta["step"] == 6
    assert torch.equal(resumed, reference)
    assert _steps(run) == [1, 2, 3, 4, 5, 6]


def test_a_save_past_preempt_save_timeout_exits_and_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    # The save of checkpoint-3 hangs (after its files are written, before the rename).
    stopped = train_demo(run, "--set", "train.preempt_save_timeout=2", fault="generate@4:term,checkpoint@3:hang")
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr
    (line,) = _stopped_lines(stopped)
    assert "train.preempt_save_timeout = 2 s" in line and "previous checkpoint is intact" in line
    assert list(run.glob(".checkpoint-3.*.tmp")) and not (run / "checkpoint-3").exists()
    assert _complete(run / "checkpoint-2") == 2


def test_a_signal_before_the_first_step_saves_nothing_and_says_so(tmp_path):
    run = tmp_path / "run"
    stopped = train_demo(run, fault="generate@1:term")
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr
    (line,) = _stopped_lines(stopped)
    assert "before any step finished" in line
    assert not list(run.glob("checkpoint-*")) and not (run / "metrics.jsonl").exists()


TWO_ARGS = ["train", "--max-steps", "4", "--save-every", "2", "--prompts-per-step", "2", "--num-generations", "4",
            "--lr", "0.03", "--set", "rollout.batch_prompts=1", "--set", "train.grader_workers=0",
            "--set", "train.warmup_ratio=0"]


def _torchrun(out, *extra, env):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *extra, "-m", "steer_cli", *TWO_ARGS, "--output-dir", str(out), "--resume"],
                          cwd=out.parent, env=dict(env, PYTHONUNBUFFERED="1"), capture_output=True, text=True,
                          timeout=900)


def test_two_processes_stop_at_the_same_step_and_torchrun_restarts_resume_exactly(tmp_path):
    """The README's torchrun line: `--max-restarts` reruns the same command (with --resume) after
    the workers stopped, and the run ends as an uninterrupted one does."""
    whole, run = tmp_path / "whole", tmp_path / "run"
    done = _torchrun(whole, env=demo_env())
    assert done.returncode == 0, done.stderr

    # Only rank 1 gets SIGTERM (after step 4's rollouts); rank 0 learns it at the next check point.
    # Both save and exit 75; torchrun restarts them (faults act in the first attempt only).
    restarted = _torchrun(run, "--max-restarts", "1", env=demo_env("generate@4:term", STEER_FAULT_RANK="1"))
    assert restarted.returncode == 0, restarted.stderr
    lines = _stopped_lines(restarted)
    assert len(lines) == 2, restarted.stderr  # both processes stopped, once
    assert any("SIGTERM during step 4" in x for x in lines)  # the one that got it
    assert any("a signal to another process during step 4" in x for x in lines)  # the one that did not
    assert all("checkpoint-3 saved" in x for x in lines)
    a, _ = load_vectors(whole / "final" / "vectors.safetensors")
    b, _ = load_vectors(run / "final" / "vectors.safetensors")
    assert torch.equal(a, b)
    assert _steps(run) == [1, 2, 3, 4]


def test_fault_points_act_once_under_torchrun_restarts_and_on_the_chosen_rank(monkeypatch):
    from steer_cli import faults

    monkeypatch.setenv("STEER_FAULT", "generate@2:nonsense")  # an action that raises when it acts
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    faults.maybe_die("generate", 2)  # a restarted worker runs clean
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("STEER_FAULT_RANK", "1")
    monkeypatch.setenv("RANK", "0")
    faults.maybe_die("generate", 2)  # another rank's fault
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="nonsense"):
        faults.maybe_die("generate", 2)


def test_eval_stops_on_sigterm_keeps_finished_results_and_the_same_command_continues(
        tiny_lm, shared_data, tmp_path, monkeypatch, coin_grader):
    import signal

    from typer.testing import CliRunner

    import steer_cli.evaluate.generation as eval_generation
    from steer_cli.cli import _register, app

    _register()
    runner = CliRunner()

    def args(out):  # shards of one problem (2 samples): two per (benchmark, seed)
        return ["eval", "--model", str(tiny_lm), "--data-dir", str(shared_data), "--benchmarks", "aime24,gsm8k",
                "--samples", "2", "--temperature", "1.0", "--seeds", "0,1", "--limit", "2", "--max-new-tokens", "8",
                "--set", "train.grader_workers=0", "--set", "eval.shard_samples=2", "-o", str(out)]

    whole = tmp_path / "whole"
    assert runner.invoke(app, args(whole)).exit_code == 0

    out = tmp_path / "out"
    write = eval_generation.write_results

    def write_then_sigterm(path, lines):  # the scheduler's SIGTERM right after the first shard
        write(path, lines)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(eval_generation, "write_results", write_then_sigterm)
    stopped = runner.invoke(app, args(out))
    assert stopped.exit_code == EXIT_PREEMPTED, stopped.output
    (line,) = [x for x in stopped.stderr.splitlines() if x.startswith("stopped:")]
    assert line.startswith("stopped: SIGTERM: finished results in ") and "same command" in line
    assert "Traceback" not in stopped.output
    (shard,) = out.rglob("*.jsonl")  # one finished shard, not yet merged
    assert shard.parent.name == ".shards"
    assert not (out / "summary.json").exists() and not (out / ".steer.lock").exists()

    monkeypatch.setattr(eval_generation, "write_results", write)
    again = runner.invoke(app, args(out))
    assert again.exit_code == 0, again.output
    assert again.output.count("1 of 2 problems finished earlier, kept") == 1
    assert not list(out.rglob(".shards/*"))
    summary, reference = (json.loads((d / "summary.json").read_text()) for d in (out, whole))
    assert summary["benchmarks"] == reference["benchmarks"] and summary["average"] == reference["average"]


class _Writes:
    """A stderr that records each write call (unbuffered, as under PYTHONUNBUFFERED=1)."""

    def __init__(self):
        self.calls = []

    def write(self, text):
        self.calls.append(text)

    def flush(self):
        pass


@pytest.mark.parametrize("error", ["input", "write", "stop"])
def test_each_closing_line_goes_out_in_one_write_so_two_processes_cannot_join_theirs(monkeypatch, error):
    """Under torchrun both processes print the same closing line at once; print() writes the newline
    separately, and CI once saw two "stopped:" lines run together into one."""
    import typer

    from steer_cli.cli.common import run_command
    from steer_cli.errors import Interrupted, SteerError, WriteError

    exc = {"input": SteerError("bad flag"), "write": WriteError("cannot write x"), "stop": Interrupted("SIGTERM")}[error]

    def boom():
        raise exc

    writes = _Writes()
    monkeypatch.setattr(sys, "stderr", writes)
    with pytest.raises(typer.Exit):
        run_command(boom)
    assert len(writes.calls) == 1 and writes.calls[0].endswith("\n") and writes.calls[0].count("\n") == 1, writes.calls
