"""One writer per output: a second `steer train` into a run directory in use (a job launched twice,
a requeue beside the old job), a second extract/merge/fold into the same output, fail with one
line naming the holder, exit 2, and write nothing; the first finishes untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from demo_runs import ARGS, demo_env, train_demo

from steer_cli.cli import main
from steer_cli.errors import SteerError
from steer_cli.lock import LOCK_NAME, hold_dir, hold_output
from steer_cli.vectors.file import save_vectors

_AT = ARGS.index("--max-steps") + 1
TWO_STEPS = [*ARGS[:_AT], "2", *ARGS[_AT + 1:]]


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _wait_for(path, proc, limit=300.0):
    """Until ``path`` exists (a fault point reached); fails if the process ends first."""
    end = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_two_runs_into_one_directory_one_finishes_the_other_exits_2(tmp_path):
    run, gate = tmp_path / "run", tmp_path / "gate"
    # The first run holds at step 1 (after its rollouts) until the test opens the gate.
    first = subprocess.Popen([sys.executable, "-m", "steer_cli", *TWO_STEPS, "--output-dir", str(run)],
                             env=demo_env(f"generate@1:wait={gate}"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "gate.reached", first)
        before = _snapshot(run)
        # The second: another seed, and --overwrite, which would clear the first run's files.
        second = train_demo(run, "--seed", "1", "--overwrite", args=TWO_STEPS)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), second.stderr
        assert f"is in use by steer train (pid {first.pid} on host " in lines[0]
        assert "--output-dir" in lines[0]
        assert _snapshot(run) == before  # nothing written, nothing cleared
        gate.write_text("go")
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # exactly max_steps lines, none from the second run
    assert "seed: 0" in (run / "settings.yaml").read_text()
    assert not (run / LOCK_NAME).exists()


def test_second_holder_is_refused_with_the_first_ones_identity(tmp_path):
    out = tmp_path / "a" / "b"
    with hold_dir(out, "steer eval", hint="another --output-dir"):
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["what"] == "steer eval"
        with pytest.raises(SteerError, match=rf"{out} is in use by steer eval \(pid {os.getpid()} on host .*"
                                             r"wait for it to finish or use another --output-dir"):
            with hold_dir(out, "steer train"):
                pass
    assert not (tmp_path / "a").exists()  # created for the lock, nothing went in: removed again
    out.mkdir(parents=True)
    with hold_dir(out, "steer train"):
        (out / "kept").write_text("x")
    assert out.is_dir() and (out / "kept").exists() and not (out / LOCK_NAME).exists()


def test_a_lock_file_whose_holder_died_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "gone", "what": "steer train"}))
    with hold_dir(out, "steer train"):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_the_lock_file_leaves_a_directory_empty_and_survives_overwrite(tmp_path):
    from steer_cli.io import clear_dir
    from steer_cli.settings import Layer, build_settings
    from steer_cli.train.outputs import check_output_dir

    out = tmp_path / "run"
    s = build_settings([Layer({"output": {"output_dir": str(out)}}, "test")])
    with hold_dir(out, "steer train"):
        check_output_dir(out, s)  # only the lock file: an empty directory, not someone's run
        (out / "settings.yaml").write_text("x")
        (out / "checkpoint-1").mkdir()
        clear_dir(out)
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]


def test_latest_run_ignores_the_lock_file(tmp_path):
    from steer_cli.runs import latest_run

    for name in ("old", "new"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "settings.yaml").write_text("x")
        (tmp_path / name / "metrics.jsonl").write_text("")
        os.utime(tmp_path / name / "settings.yaml", (1000 if name == "old" else 2000,) * 2)
        os.utime(tmp_path / name / "metrics.jsonl", (1000 if name == "old" else 2000,) * 2)
    (tmp_path / "old" / LOCK_NAME).write_text("{}")  # fresh mtime: must not make "old" the newest
    assert latest_run(tmp_path, kind="train").name == "new"


def _cli(argv, capsys):
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["extract", "merge", "fold"])
def test_extract_merge_and_fold_outputs_in_use_are_refused(tmp_path, capsys, command, tiny_lm):
    vectors = tmp_path / "v.safetensors"
    save_vectors(vectors, torch.ones(2, 64) * 0.01, base_model=str(tiny_lm))
    out = tmp_path / ("folded" if command == "fold" else "out.safetensors")
    argv = {"extract": ["extract", vectors, "-o", out], "merge": ["merge", vectors, "-o", out],
            "fold": ["merge", "--fold", "--vectors", vectors, "-o", out]}[command]
    with hold_output(out, "another steer command"):
        code, err = _cli(argv, capsys)
        assert (tmp_path / f".{out.name}.lock").exists()  # beside the output, not inside it
    assert code == 2, err
    assert err.count("\n") == 1 and f"{out} is in use by another steer command (pid {os.getpid()}" in err
    assert not out.exists()
    code, err = _cli(argv, capsys)  # free again: it works, and leaves no lock file
    assert code == 0, err
    assert out.exists() and not (tmp_path / f".{out.name}.lock").exists()


def test_eval_output_in_use_is_refused_and_nothing_written(tiny_lm, shared_data, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    argv = ["eval", "--model", tiny_lm, "--data-dir", shared_data, "--benchmarks", "gsm8k", "--limit", "1",
            "--max-new-tokens", "4", "--set", "train.grader_workers=0", "-o", out]
    with hold_dir(out, "steer train"):
        code, err = _cli(argv, capsys)
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]
    assert code == 2 and err.count("\n") == 1, err
    assert f"{out} is in use by steer train (pid {os.getpid()}" in err and "another --output-dir" in err
    code, err = _cli(argv, capsys)
    assert code == 0, err
    assert (out / "summary.json").exists() and not (out / LOCK_NAME).exists()
