"""A checkpoint cut short (a node that died mid-copy on a file system without atomic rename, a quota,
a bad disk): `--resume` says so in one line, moves it aside (`checkpoint-N.damaged`, never
deleted) and resumes from the newest intact one, ending bit for bit where an uninterrupted run
ends; one file of each kind is damaged in turn (vectors, optimizer, trainer state, a LoRA adapter,
a full model shard). Checkpoints from before manifests still resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.manifest import MANIFEST_NAME, manifest_damage, write_manifest
from steer_cli.train.checkpoint import STATE_FILE, checkpoint_damage, find_resume_point, set_aside

_register()
runner = CliRunner()
COMMON = ("--max-steps", "3", "--save-every", "1", "--lr", "0.05")  # checkpoint-1, checkpoint-2, final/


def _train(model, data, out, *extra):
    return runner.invoke(app, ["train", "--model", str(model), "--dataset", str(data), "--output-dir", str(out),
                               "--prompts-per-step", "2", "--num-generations", "3", "--max-new-tokens", "6",
                               "--set", "train.micro_batch_size=4", "--set", "train.grader_workers=0",
                               *COMMON, *extra])


def _final(run):
    """Every tensor of final/ (vectors, adapter or model), by file and name."""
    return {f"{f.relative_to(run)}:{k}": v for f in sorted((run / "final").rglob("*.safetensors"))
            for k, v in load_file(str(f)).items()}


def _cut(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return len(data) // 2, len(data)


def _notes(result):
    return [line for line in result.stderr.splitlines() if line.startswith("note:")]


def _steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _resume_after_damage(model, data, run, reference, name, moved_to, *extra):
    """final/ goes (a run that never got there); --resume must set checkpoint-2 aside and redo 2-3."""
    shutil.rmtree(run / "final")
    short, whole = _cut(run / "checkpoint-2" / name)
    result = _train(model, data, run, "--resume", *extra)
    assert result.exit_code == 0, result.output
    assert _notes(result) == [f"note: checkpoint-2 is damaged ({name} has {short} of {whole} bytes (cut short)); "
                              f"moved it to {moved_to}, resuming from checkpoint-1"]
    assert (run / moved_to / name).stat().st_size == short  # kept as it was
    assert checkpoint_damage(run / "checkpoint-2") is None  # written again, whole
    assert _steps(run) == [1, 2, 3]
    got = _final(run)
    assert got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got)


def test_each_damaged_file_of_a_steering_checkpoint_is_set_aside_and_resume_equals_uninterrupted(
        tiny_lm, tiny_problems, tmp_path, coin_grader):
    run = tmp_path / "run"
    assert _train(tiny_lm, tiny_problems, run).exit_code == 0
    reference = _final(run)
    for i, name in enumerate(["vectors.safetensors", "optimizer.pt", STATE_FILE]):
        moved = "checkpoint-2.damaged" + (f"-{i + 1}" if i else "")
        _resume_after_damage(tiny_lm, tiny_problems, run, reference, name, moved)

    # A checkpoint from before manifests resumes as it did.
    ckpt = run / "checkpoint-2"
    (ckpt / MANIFEST_NAME).unlink()
    state = json.loads((ckpt / STATE_FILE).read_text())
    del state["manifest"]
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    shutil.rmtree(run / "final")
    result = _train(tiny_lm, tiny_problems, run, "--resume")
    assert result.exit_code == 0, result.output
    assert not _notes(result) and _steps(run) == [1, 2, 3]
    assert all(torch.equal(v, reference[k]) for k, v in _final(run).items())

    # No intact checkpoint left: with final/ there is nothing to continue (refused, nothing moved);
    # without, the run starts over, which ends where it always does.
    for c in ("checkpoint-1", "checkpoint-2"):
        _cut(run / c / "vectors.safetensors")
    before = sorted(p.name for p in run.iterdir())
    refused = _train(tiny_lm, tiny_problems, run, "--resume")
    assert refused.exit_code == 2 and "left no intact checkpoint" in refused.stderr, refused.output
    assert sorted(p.name for p in run.iterdir()) == before
    shutil.rmtree(run / "final")
    result = _train(tiny_lm, tiny_problems, run, "--resume")
    assert result.exit_code == 0, result.output
    notes = _notes(result)
    assert len(notes) == 2 and all("no intact checkpoint is left: the run starts from the beginning" in n
                                   for n in notes), notes
    assert (run / "checkpoint-1.damaged").is_dir() and (run / "checkpoint-2.damaged-4").is_dir()
    assert _steps(run) == [1, 2, 3]
    assert all(torch.equal(v, reference[k]) for k, v in _final(run).items())


@pytest.mark.parametrize("setup, name", [("lora", "adapter/adapter_model.safetensors"),
                                         ("full", "model/model.safetensors")])
def test_a_damaged_adapter_or_model_shard_is_set_aside_and_resume_equals_uninterrupted(
        tiny_lm, tiny_problems, tmp_path, coin_grader, setup, name):
    run = tmp_path / "run"
    assert _train(tiny_lm, tiny_problems, run, "--setup", setup).exit_code == 0
    _resume_after_damage(tiny_lm, tiny_problems, run, _final(run), name, "checkpoint-2.damaged", "--setup", setup)


def _checkpoint(path, *, manifest=True):
    path.mkdir(parents=True)
    save_file({"vectors": torch.arange(12.0).view(3, 4)}, str(path / "vectors.safetensors"))
    torch.save({"optimizer": {"state": {}}}, path / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, path / "rng.pt")
    state = {"step": int(path.name.split("-")[1])}
    if manifest:
        state["manifest"] = MANIFEST_NAME
    (path / STATE_FILE).write_text(json.dumps(state))
    if manifest:
        write_manifest(path)
    return path


def test_the_manifest_finds_a_file_missing_short_or_changed(tmp_path):
    ckpt = _checkpoint(tmp_path / "checkpoint-3")
    assert manifest_damage(ckpt) is None and checkpoint_damage(ckpt) is None
    doc = json.loads((ckpt / MANIFEST_NAME).read_text())
    assert sorted(doc["files"]) == ["optimizer.pt", "rng.pt", STATE_FILE, "vectors.safetensors"]
    data = (ckpt / "rng.pt").read_bytes()
    (ckpt / "rng.pt").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes
    assert manifest_damage(ckpt) == "rng.pt does not match its sha256"
    (ckpt / "rng.pt").unlink()
    assert manifest_damage(ckpt) == "rng.pt is missing"
    (ckpt / MANIFEST_NAME).write_text('{"kind": "steer-manif')
    assert manifest_damage(ckpt) == f"{MANIFEST_NAME} is unreadable"
    (ckpt / MANIFEST_NAME).unlink()
    assert checkpoint_damage(ckpt) == f"{MANIFEST_NAME} is missing"  # its state says it had one


@pytest.mark.parametrize("name, why", [("vectors.safetensors", "is cut short"), ("optimizer.pt", "is unreadable"),
                                       (STATE_FILE, "is unreadable")])
def test_a_checkpoint_from_before_manifests_is_checked_for_what_it_can_show(tmp_path, name, why):
    ckpt = _checkpoint(tmp_path / "checkpoint-2", manifest=False)
    assert checkpoint_damage(ckpt) is None
    _cut(ckpt / name)
    assert checkpoint_damage(ckpt) == f"{name} {why}"


def test_the_newest_intact_checkpoint_is_found_and_damaged_ones_set_aside_by_a_free_name(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4, 6):
        _checkpoint(run / f"checkpoint-{step}")
    _cut(run / "checkpoint-6" / "optimizer.pt")
    (run / "checkpoint-4" / "vectors.safetensors").unlink()
    point = find_resume_point(run)
    assert point.checkpoint == run / "checkpoint-2"
    assert [(p.name, why.split(" ")[1]) for p, why in point.damaged] == [("checkpoint-6", "has"),
                                                                        ("checkpoint-4", "is")]
    (run / "checkpoint-6.damaged").mkdir()
    assert set_aside(run / "checkpoint-6").name == "checkpoint-6.damaged-2"
    assert find_resume_point(run).damaged[0][0].name == "checkpoint-4"
