"""No process outlives a steer command: grader workers, multiprocessing's fork server and resource
tracker, vLLM engines and any other helper are ended and reaped before `steer` exits, on success,
on error and on SIGTERM, also when a stop's deadline cuts the process short and under torchrun.
Outside a test process, the check is a child subreaper (tests/subreaper.py): whatever outlived
the command is reparented to it, alive or a zombie."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from demo_runs import demo_env

from steer_cli.cli import main
from steer_cli.train.checkpoint import list_checkpoints

SUBREAPER = Path(__file__).with_name("subreaper.py")
# Two steps of the demo with real grader workers (a fork server and two workers).
DEMO = ["train", "--max-steps", "2", "--prompts-per-step", "2", "--num-generations", "2",
        "--set", "train.grader_workers=2"]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are Linux's")


def _descendants():
    return {(p.pid, p.create_time()) for p in psutil.Process().children(recursive=True)}


def _main(argv):
    try:
        main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


def test_in_process_nothing_is_left_after_success_a_write_error_and_sigterm(tiny_lm, tiny_problems, tmp_path,
                                                                            monkeypatch, capsys):
    base = ["train", "--model", tiny_lm, "--dataset", tiny_problems, "--prompts-per-step", "2",
            "--num-generations", "2", "--max-new-tokens", "4", "--max-steps", "1", "--set", "train.grader_workers=2"]
    before = _descendants()
    for i, (fault, code) in enumerate([(None, 0), ("write@*/final", 74), ("generate@1:term", 75)]):
        if fault:
            monkeypatch.setenv("STEER_FAULT", fault)
        assert _main([*base, "--output-dir", tmp_path / f"run{i}"]) == code, capsys.readouterr().err
        assert _descendants() <= before  # the grader's fork server and workers are gone


def _under_subreaper(argv, env, cwd):
    done = subprocess.run([sys.executable, str(SUBREAPER), *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["returncode"], report["left"], done.stderr


def test_a_run_cut_off_by_its_stop_deadline_leaves_no_process(tmp_path):
    """SIGTERM during step 2, then the save hangs past train.preempt_save_timeout: the process
    exits through os._exit, and still ends its grader workers and fork server first."""
    run = tmp_path / "run"
    code, left, err = _under_subreaper(
        [sys.executable, "-m", "steer_cli", *DEMO, "--save-every", "5", "--set", "train.preempt_save_timeout=1",
         "--output-dir", str(run)],
        demo_env("generate@2:term,checkpoint@1:hang"), tmp_path)
    assert code == 75, err
    assert "train.preempt_save_timeout = 1 s" in err
    assert left == [], left


def test_under_torchrun_a_full_disk_stops_every_process_and_leaves_none(tmp_path):
    """Rank 0 cannot write checkpoint-1: both processes print the one line and stop (exit 74, or
    the agent's SIGTERM once the first has), and nothing they started outlives torchrun."""
    run = tmp_path / "run"
    code, left, err = _under_subreaper(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "steer_cli",
         *DEMO, "--save-every", "1", "--set", "train.grader_workers=0", "--output-dir", str(run)],
        dict(demo_env("write@*/checkpoint-1", STEER_FAULT_RANK="0"), PYTHONUNBUFFERED="1"), tmp_path)
    assert code != 0
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 2 and all(x.startswith(f"error: cannot write {run / 'checkpoint-1'}: No space left on "
                                                "device (ENOSPC)") for x in lines), err
    assert re.search(r"exitcode\s*:\s*74", err), err  # rank 0's own code, in torchrun's report
    assert not list_checkpoints(run) and not list(run.glob(".checkpoint-*"))
    assert left == [], left
