"""Before ``steer train`` touches anything: cross-field checks of its settings, where its run goes,
and whether that directory may be written (fresh, --resume, --overwrite); then its first write."""

from __future__ import annotations

import os
from pathlib import Path

from steer_cli.errors import SteerError
from steer_cli.io import atomic_write_text, clear_dir
from steer_cli.lock import is_lock_file
from steer_cli.models import model_slug
from steer_cli.rewards.plugins import parse_reward
from steer_cli.settings import Settings, diff_settings, load_settings_file
from steer_cli.train.checkpoint import latest_checkpoint, remove_partial_checkpoints


def check_training_settings(s: Settings) -> None:
    """Cross-field checks that pydantic's per-field validation cannot express."""
    problems = []
    if s.train.advantage in ("rloo", "mean", "mean_std") and s.rollout.num_generations < 2:
        problems.append(
            f"rollout.num_generations = {s.rollout.num_generations} (--num-generations): "
            f"{s.train.advantage} advantages compare completions of the same prompt; use at least 2"
        )
    if s.rollout.temperature <= 0:
        problems.append("rollout.temperature must be > 0 for training (log-probs use logits / T)")
    if s.output.resume and s.output.overwrite:
        problems.append("--resume and --overwrite contradict each other; pick one")
    try:
        parse_reward(s.train.reward)
    except SteerError as err:
        problems.append(str(err))
    if s.train.fsdp and s.setup.kind != "full":
        problems.append(
            f"train.fsdp (--fsdp) shards full fine-tuning; setup.kind = {s.setup.kind} (--setup) trains "
            f"{'vectors' if s.setup.kind == 'steering' else 'an adapter'} small enough to replicate: drop --fsdp")
    if problems:
        raise SteerError("invalid settings:\n  " + "\n  ".join(problems) if len(problems) > 1 else problems[0])


def setup_label(s: Settings) -> str:
    if s.preset and s.preset.count("/") == 2:
        return s.preset.rsplit("/", 1)[1]
    label = s.setup.kind
    if s.setup.kind == "lora" and s.setup.lora.rank != 4:
        label += f"-r{s.setup.lora.rank}"
    if s.setup.kind == "steering" and s.setup.steering.layers:
        label += "-layer-" + "-".join(map(str, s.setup.steering.layers))
    return label


def dataset_slug(name: str) -> str:
    path = Path(name)
    if path.suffix in (".jsonl", ".json", ".parquet"):
        return path.stem
    return path.name or name


def default_output_dir(s: Settings) -> Path:
    return (Path(s.output.runs_dir) / model_slug(s.model.name) / dataset_slug(s.data.dataset)
            / setup_label(s) / f"seed-{s.train.seed}")


# What a run writes into its output directory before its first checkpoint (besides hidden
# temporary files): a requeued `--resume` may start over when nothing else is there.
_RUN_OWN_FILES = frozenset({"settings.yaml", "metrics.jsonl", "steer", "wandb"})  # steer/, wandb/: trackers


def check_output_dir(out_dir: Path, s: Settings) -> bool:
    """Refuse to touch someone else's files; check a resumed run's settings. No side effects.

    Returns whether the run continues from a checkpoint. ``--resume`` starts from the beginning
    when there is nothing to continue: no directory, an empty one, or one holding only this run's
    own files from before its first checkpoint (same settings), so requeue scripts can always pass it.
    """
    exists = out_dir.exists()
    if exists and not out_dir.is_dir():
        raise SteerError(f"output path {out_dir} exists and is not a directory")
    non_empty = exists and any(not is_lock_file(p) for p in out_dir.iterdir())  # our lock: still empty
    settings_file = out_dir / "settings.yaml"
    if s.output.resume and non_empty:
        if not settings_file.exists():
            raise SteerError(f"--resume: {out_dir} holds no steer run (no settings.yaml); drop --resume to start one")
        previous = load_settings_file(settings_file)
        diffs = diff_settings(previous, s)
        if diffs:
            lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:12])
            raise SteerError(
                f"--resume: these settings differ from the run in {out_dir} and would change its results: "
                f"{lines}. Use the run's settings, or a new --output-dir"
            )
        if latest_checkpoint(out_dir) is not None:
            return True
        if (out_dir / "final").exists():
            raise SteerError(f"--resume: the run in {out_dir} has finished (final/) and left no checkpoint to "
                             "continue from; pass --overwrite to train it again, or another --output-dir")
        others = sorted(p.name for p in out_dir.iterdir()
                        if p.name not in _RUN_OWN_FILES and not p.name.startswith("."))
        if others:
            raise SteerError(f"--resume: {out_dir} has no checkpoint yet and holds files that are not the run's "
                             f"({', '.join(others[:5])}); move them away, or pass --overwrite")
    elif non_empty:
        if not s.output.overwrite:
            raise SteerError(
                f"output directory {out_dir} exists and is not empty; pass --resume to continue that run, "
                "--overwrite to replace it, or another --output-dir"
            )
        if not settings_file.exists():
            raise SteerError(
                f"--overwrite: {out_dir} is not a steer run directory (no settings.yaml); "
                "refusing to delete its contents, choose another --output-dir"
            )
    probe = out_dir if exists else next((p for p in out_dir.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        raise SteerError(f"cannot write to output directory {out_dir} ({probe} is not writable)")
    return False


def init_output_dir(out_dir: Path, s: Settings, *, continues: bool = False) -> None:
    """Clear an --overwrite'd run (or a --resume'd one that had no checkpoint yet: its metrics and
    half-written checkpoints) and write settings.yaml (after check_output_dir and loading)."""
    if continues:
        return
    try:
        if out_dir.exists() and s.output.overwrite:
            clear_dir(out_dir)
        elif out_dir.exists() and s.output.resume:
            remove_partial_checkpoints(out_dir)
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "settings.yaml", s.to_yaml())
    except OSError as err:
        raise SteerError(f"cannot write to output directory {out_dir}: {err.strerror or err}") from None
