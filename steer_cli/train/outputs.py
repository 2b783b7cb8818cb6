"""Before ``steer train`` touches anything: cross-field checks of its settings, where its run goes,
and whether that directory may be written (fresh, --resume, --overwrite); then its first write."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from steer_cli.errors import SteerError, say
from steer_cli.io import atomic_write_text, clear_dir, writing
from steer_cli.lock import is_lock_file
from steer_cli.models import model_slug
from steer_cli.rewards.plugins import parse_reward
from steer_cli.settings import Settings, diff_settings, load_settings_file
from steer_cli.train.checkpoint import (
    DAMAGED_RE,
    ResumePoint,
    checkpoint_damage,
    find_resume_point,
    list_checkpoints,
    remove_partial_checkpoints,
    set_aside,
)


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


def check_output_dir(out_dir: Path, s: Settings) -> ResumePoint | None:
    """Refuse to touch someone else's files; check a resumed run's settings. No side effects.

    Returns where a ``--resume`` continues (None: the run starts from the beginning), after
    checking its newest checkpoints (``find_resume_point``): damaged ones are listed there, to be
    set aside by ``init_output_dir``. ``--resume`` starts from the beginning when there is nothing
    to continue: no directory, an empty one, or one holding only this run's own files from before
    its first checkpoint (same settings) and damaged checkpoints, so requeue scripts can always
    pass it.
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
        point = find_resume_point(out_dir)
        if point.checkpoint is not None:
            return point
        left = " intact" if point.damaged else ""
        if (out_dir / "final").exists():
            raise SteerError(f"--resume: the run in {out_dir} has finished (final/) and left no{left} checkpoint to "
                             "continue from; pass --overwrite to train it again, or another --output-dir")
        damaged = {p.name for p, _ in point.damaged}
        others = sorted(p.name for p in out_dir.iterdir()
                        if p.name not in _RUN_OWN_FILES and p.name not in damaged and not DAMAGED_RE.match(p.name)
                        and not p.name.startswith("."))
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
    return point if s.output.resume and non_empty else None


def init_output_dir(out_dir: Path, s: Settings, point: ResumePoint | None = None) -> None:
    """Set damaged checkpoints aside (one line each); unless the run continues from a checkpoint,
    clear an --overwrite'd run (or a --resume'd one that had none: its metrics and half-written
    checkpoints) and write settings.yaml (after check_output_dir and loading)."""
    for path, why in point.damaged if point is not None else []:
        moved = set_aside(path)
        then = (f"resuming from {point.checkpoint.name}" if point.checkpoint is not None else
                "no intact checkpoint is left: the run starts from the beginning")
        say(f"note: {path.name} is damaged ({why}); moved it to {moved.name}, {then}")
    if point is not None and point.checkpoint is not None:
        return
    with writing(out_dir):
        if out_dir.exists() and s.output.overwrite:
            clear_dir(out_dir)
        elif out_dir.exists() and s.output.resume:
            remove_partial_checkpoints(out_dir)
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "settings.yaml", s.to_yaml())


def run_finished(out_dir: Path, s: Settings) -> bool:
    """A run of a ``--resume``'d job that has written ``final/`` with these settings: the job does
    not train it again (other settings: ``check_output_dir`` says what differs)."""
    if not (s.output.resume and (out_dir / "final").is_dir() and (out_dir / "settings.yaml").is_file()):
        return False
    return not diff_settings(load_settings_file(out_dir / "settings.yaml"), s)


def _step_of(point: ResumePoint | None) -> int:
    if point is None or point.checkpoint is None:
        return 0
    return int(point.checkpoint.name.rsplit("-", 1)[1])


def common_resume(runs: list) -> None:
    """Put every resumed run of a job at one step: a job stopped while it saved its runs one by
    one (a kill between two) has some runs one checkpoint ahead. Those go back to the step all
    runs reached (their newer checkpoints are removed: the job recomputes them bit for bit);
    a run that kept no intact checkpoint of that step is refused."""
    steps = [_step_of(r.resume_point) for r in runs]
    target = min(steps)
    if target == max(steps):
        return
    for run, step in zip(runs, steps):
        if step == target:
            continue
        earlier = {n: p for n, p in list_checkpoints(run.out_dir)}
        path = earlier.get(target)
        if target and (path is None or checkpoint_damage(path) is not None):
            raise SteerError(
                f"--resume: the runs of this job stopped at different steps ({run.name} at {step}, another at "
                f"{target}) and {run.name} keeps no intact checkpoint-{target} (train.keep_last); resume the runs "
                "as separate jobs")
        with writing(run.out_dir):
            for n, p in earlier.items():
                if n > target:
                    shutil.rmtree(p)
                    say(f"note: {run.name}: removed {p.name}, ahead of the job's other runs (step {target}); "
                          "the job recomputes it")
        run.resume_point = ResumePoint(path if target else None, run.resume_point.damaged)
