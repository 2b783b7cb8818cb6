"""A full disk (or another OS error) on a write: one `error:` line naming the path and the error,
exit code 74 (EX_IOERR), no traceback, nothing written earlier removed, no half-written file under
a final name; then the same command (`steer train` with --resume) continues and ends as an
uninterrupted run does. A real full disk is a small tmpfs where the tests run as root; each writer
is also failed on its own by STEER_FAULT=write@<path> (steer_cli/faults.py)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from steer_cli.cli import main
from steer_cli.errors import WriteError
from steer_cli.io import append_jsonl, atomic_path, atomic_write_text, os_error
from steer_cli.study.record import write_study
from steer_cli.train import run as train_run
from steer_cli.train.checkpoint import checkpoint_damage
from steer_cli.vectors.file import save_vectors

EXIT_IOERR = 74
TRAIN = ["--prompts-per-step", "2", "--num-generations", "3", "--max-new-tokens", "6", "--max-steps", "3",
         "--save-every", "1", "--lr", "0.05", "--set", "train.micro_batch_size=4", "--set", "train.grader_workers=0"]


def _run(argv):
    try:
        main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


def _cli(argv, capsys):
    code = _run(argv)
    return code, capsys.readouterr().err


def _one_error(code, err, *needles):
    assert code == EXIT_IOERR, err
    assert "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    for needle in needles:
        assert needle in line, line
    return line


def _train(model, data, out, *extra):
    return ["train", "--model", model, "--dataset", data, "--output-dir", out, *TRAIN, *extra]


def _final(run):
    return load_file(str(run / "final" / "vectors.safetensors"))["vectors"]


def _steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _leftovers(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.name != ".steer.lock")


@pytest.fixture(scope="module")
def reference(tiny_lm, tiny_problems, tmp_path_factory):
    """Final vectors of the uninterrupted run."""
    from conftest import CoinGrader

    import steer_cli.rewards.pool

    out = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(steer_cli.rewards.pool, "Grader", CoinGrader)
        assert _run(_train(tiny_lm, tiny_problems, out)) == 0
    return _final(out)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted for the test (root only); None where it cannot be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield None
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(disk):
    """Write a file until the disk refuses a single byte more."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_the_disk_fills_during_a_run_then_resume_equals_uninterrupted(
        tiny_lm, tiny_problems, tmp_path, small_disk, monkeypatch, capsys, coin_grader, reference):
    """Real: a tmpfs filled up before step 3 (where the tests can mount one); else every write of
    final/ fails as that full disk would."""
    root = small_disk or tmp_path
    run = root / "run"
    original = train_run.Trainer.step

    def step(self, index, grader):
        if index == 2:
            if small_disk:
                _fill(small_disk)
            else:
                monkeypatch.setenv("STEER_FAULT", "write@*/final")
        return original(self, index, grader)

    monkeypatch.setattr(train_run.Trainer, "step", step)
    code, err = _cli(_train(tiny_lm, tiny_problems, run), capsys)
    line = _one_error(code, err, f"cannot write {run}/", "No space left on device (ENOSPC)",
                      "then run the same command with --resume (it continues from checkpoint-2)")
    assert line.split(" (")[0].endswith(("/final", "/metrics.jsonl")), line  # the first write that failed
    assert checkpoint_damage(run / "checkpoint-2") is None and not (run / "final").exists()
    assert _steps(run) in ([1, 2], [1, 2, 3])  # every line whole
    assert _leftovers(run) == []  # no temporary file or directory

    monkeypatch.setattr(train_run.Trainer, "step", original)
    monkeypatch.delenv("STEER_FAULT", raising=False)
    if small_disk:
        (small_disk / "filler").unlink()
    code, err = _cli(_train(tiny_lm, tiny_problems, run, "--resume"), capsys)
    assert code == 0, err
    assert torch.equal(_final(run), reference) and _steps(run) == [1, 2, 3]


@pytest.mark.parametrize("target, before, resumes", [
    (".steer.lock", [], False),                         # the first write of all: nothing is created
    ("settings.yaml", [], False),
    ("metrics.jsonl", ["metrics.jsonl", "settings.yaml"], False),  # a torn line is cut off again: an empty log
    ("checkpoint-2", ["checkpoint-1", "metrics.jsonl", "settings.yaml"], True),
])
def test_each_training_writer_fails_cleanly_and_resume_continues(
        tiny_lm, tiny_problems, tmp_path, monkeypatch, capsys, coin_grader, reference, target, before, resumes):
    run = tmp_path / "run"
    monkeypatch.setenv("STEER_FAULT", f"write@*/{target}")
    code, err = _cli(_train(tiny_lm, tiny_problems, run), capsys)
    _one_error(code, err, f"cannot write {run / target}", "No space left on device (ENOSPC)", "--resume")
    assert (sorted(p.name for p in run.iterdir()) if run.exists() else []) == before
    if target == "metrics.jsonl":
        assert (run / "metrics.jsonl").read_bytes() == b""
    if not resumes:
        return
    assert _steps(run) == [1, 2] and checkpoint_damage(run / "checkpoint-1") is None
    monkeypatch.delenv("STEER_FAULT")
    code, err = _cli(_train(tiny_lm, tiny_problems, run, "--resume"), capsys)
    assert code == 0, err
    assert torch.equal(_final(run), reference) and _steps(run) == [1, 2, 3]


def test_eval_shards_and_summary_fail_cleanly_and_the_same_command_continues(
        tiny_lm, tiny_problems, tmp_path, monkeypatch, capsys, coin_grader):
    def args(out):  # 4 problems of 2 samples, one problem a shard
        return ["eval", "--model", tiny_lm, "--benchmarks", tiny_problems, "--samples", "2", "--temperature", "1.0",
                "--seeds", "0", "--limit", "4", "--max-new-tokens", "4", "--set", "train.grader_workers=0",
                "--set", "eval.shard_samples=2", "-o", out]

    whole = tmp_path / "whole"
    assert _cli(args(whole), capsys)[0] == 0
    out = tmp_path / "out"
    for fault, kept in (("write@*/.shards/problems.2-2.jsonl", "shards"), ("write@*/summary.json", "results")):
        monkeypatch.setenv("STEER_FAULT", fault)
        code, err = _cli(args(out), capsys)
        _one_error(code, err, f"cannot write {out}/", "No space left on device", "finished results are kept")
        assert not (out / "summary.json").exists() and not list(out.rglob(".*.tmp"))
        if kept == "shards":  # the two shards before it are on disk, whole
            assert sorted(p.name for p in (out / "seed-0" / ".shards").iterdir()) == ["problems.0-0.jsonl",
                                                                                     "problems.1-1.jsonl"]
        else:
            assert len((out / "seed-0" / "problems.jsonl").read_text().splitlines()) == 4
    monkeypatch.delenv("STEER_FAULT")
    code, err = _cli(args(out), capsys)
    assert code == 0, err
    summary, reference = (json.loads((d / "summary.json").read_text()) for d in (out, whole))
    assert summary["benchmarks"] == reference["benchmarks"]


@pytest.mark.parametrize("command", ["extract", "merge", "fold"])
def test_extract_merge_and_fold_outputs_fail_cleanly_and_keep_the_previous_output(
        tmp_path, monkeypatch, capsys, command, tiny_lm):
    vectors = tmp_path / "v.safetensors"
    save_vectors(vectors, torch.ones(2, 64) * 0.01, base_model=str(tiny_lm))
    out = tmp_path / ("folded" if command == "fold" else "out.safetensors")
    argv = {"extract": ["extract", vectors, "-o", out, "--overwrite"],
            "merge": ["merge", vectors, "-o", out, "--overwrite"],
            "fold": ["merge", "--fold", "--vectors", vectors, "-o", out, "--overwrite"]}[command]
    assert _cli(argv, capsys)[0] == 0
    before = {p: p.read_bytes() for p in ([out] if out.is_file() else sorted(out.rglob("*"))) if p.is_file()}
    monkeypatch.setenv("STEER_FAULT", f"write@{out}")
    code, err = _cli(argv, capsys)
    _one_error(code, err, f"cannot write {out}", "No space left on device")
    assert {p: p.read_bytes() for p in before} == before  # the previous output, untouched
    assert _leftovers(tmp_path) == []


def test_a_failed_append_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    append_jsonl(log, {"step": 1})
    monkeypatch.setenv("STEER_FAULT", "write@*metrics.jsonl:EIO")
    with pytest.raises(WriteError, match=r"metrics.jsonl: Input/output error \(EIO\)") as failed:
        append_jsonl(log, {"step": 2})
    assert failed.value.errno == errno.EIO
    assert log.read_text() == '{"step": 1}\n'


def test_study_json_and_atomic_files_keep_what_was_there(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "a.txt", "old")
    monkeypatch.setenv("STEER_FAULT", "write@*")
    with pytest.raises(WriteError, match="a.txt: No space left on device"):
        atomic_write_text(tmp_path / "a.txt", "new")
    with pytest.raises(WriteError, match="study.json: No space left on device"):
        write_study(tmp_path / "study", "demo", inputs={}, settings={}, results={})
    assert (tmp_path / "a.txt").read_text() == "old" and not (tmp_path / "study" / "study.json").exists()
    assert _leftovers(tmp_path) == []


def test_os_errors_wrapped_by_libraries_are_recognised(tmp_path, monkeypatch):
    class SafetensorError(Exception):
        pass

    found = os_error(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert found.errno == errno.ENOSPC
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as wrapped:  # torch.save to a Python file object
        assert os_error(wrapped).errno == errno.EDQUOT
    assert os_error(RuntimeError("a bug, not the disk"), tmp_path) is None
    monkeypatch.setattr("steer_cli.io._disk_full", lambda directory: True)  # torch.save to a path says nothing
    assert os_error(RuntimeError("unexpected pos 576 vs 534"), tmp_path).errno == errno.ENOSPC


def test_real_library_writers_on_a_full_tmpfs(small_disk):
    if small_disk is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    _fill(small_disk)
    (small_disk / "filler").write_bytes(b"")  # room again ...
    big = torch.zeros(2 << 20)  # ... but not for 8 MiB
    for name, write in [("v.safetensors", lambda p: save_vectors(p, big.view(1024, -1), base_model="tiny")),
                        ("t.pt", lambda p: _torch_save_path(big, p))]:
        path = small_disk / name
        with pytest.raises(WriteError, match=f"cannot write {path}: No space left on device"):
            write(path)
        assert not path.exists() and list(small_disk.iterdir()) == [small_disk / "filler"]


def _torch_save_path(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)  # a path: torch's error names no OS error, the full disk is seen after it
