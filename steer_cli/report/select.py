"""Which checkpoint of a training run a report shows (``steer report --select``, ``steer merge
--select best``, ``steer study layers``).

``steer eval RUN --checkpoints ...`` writes one summary.json per checkpoint, each naming its run,
checkpoint and step. A run's checkpoints are the summaries that share ``EvalSummary.run_key`` (the
run and the protocol: temperature, strength). Per run:

- ``final``: its last checkpoint (``final/``, else the highest step) - the default;
- ``best``: the checkpoint with the highest Average, as the paper's code picks it: per evaluation
  seed the mean over the benchmarks of their primary metric (avg@32 for AIME/AMC, pass@1 for the
  others), then the mean over seeds; over the paper's six benchmarks where every checkpoint of the
  run has them, else over the benchmarks they all have. The benchmarks are the test sets, so this
  selects on the test set; a tie goes to the earlier checkpoint, as in the reference;
- ``mean``: every checkpoint, averaged per evaluation seed within the run before runs are pooled.

Summaries that are not a run's checkpoint (a base model, a vectors file, an adapter) and strength
sweeps (``--scale``/``--layers``) are left as they are.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from steer_cli.data.benchmarks import PAPER_BENCHMARKS
from steer_cli.errors import SteerError
from steer_cli.report.collect import EvalSummary, Results, collect

SELECT_MODES = ("final", "best", "mean")


@dataclass(frozen=True)
class CheckpointScore:
    """One evaluated checkpoint of a run and its Average (a fraction; None when the run's
    checkpoints share no benchmark)."""

    run: str  # the run directory as summary.json records it (absolute)
    checkpoint: str  # final | checkpoint-N
    step: Optional[int]
    average: Optional[float]
    benchmarks: tuple[str, ...]  # what the Average is over (the same for every checkpoint of the run)
    summaries: tuple[EvalSummary, ...]

    @property
    def path(self) -> Path:
        """The checkpoint directory (``<run>/final``, ``<run>/checkpoint-N``)."""
        return Path(self.run) / self.checkpoint


def _order(score: CheckpointScore) -> tuple[bool, int, bool]:
    """Oldest first; final/ after a checkpoint-N of the same step, and last when its step is unknown."""
    return (score.step is None, score.step or 0, score.checkpoint == "final")


def _newest_per_seed(summaries: Sequence[EvalSummary], bench: str) -> dict[str, float]:
    """Seed -> primary metric of one benchmark; a re-run (newer summary) of a seed replaces it."""
    newest: dict[str, tuple[float, float]] = {}
    for e in summaries:
        b = e.benchmarks.get(bench)
        if b is None:
            continue
        for seed, v in b.seed_values().items():
            if seed not in newest or e.mtime >= newest[seed][0]:
                newest[seed] = (e.mtime, v)
    return {seed: v for seed, (_, v) in newest.items()}


def paper_average(summaries: Sequence[EvalSummary], benchmarks: Sequence[str]) -> Optional[float]:
    """The Average of one evaluated thing over ``benchmarks``: per seed (those every benchmark has)
    the mean over benchmarks, then the mean over seeds; the means over seeds where no seed is
    shared. None without benchmarks."""
    per_bench = {b: _newest_per_seed(summaries, b) for b in benchmarks}
    if not benchmarks or not all(per_bench.values()):
        return None
    common = set.intersection(*(set(v) for v in per_bench.values())) - {"*"}
    if common:
        return statistics.mean(statistics.mean(per_bench[b][s] for b in benchmarks) for s in sorted(common))
    return statistics.mean(statistics.mean(v.values()) for v in per_bench.values())


def checkpoint_scores(evals: Sequence[EvalSummary]) -> dict[str, list[CheckpointScore]]:
    """Per run (``run_key``), each of its evaluated checkpoints with its Average, oldest first.
    Only summaries of a run's checkpoint are read (``run`` and ``checkpoint`` set)."""
    by_run: dict[str, dict[str, list[EvalSummary]]] = {}
    for e in evals:
        if e.run and e.checkpoint:
            by_run.setdefault(e.run_key, {}).setdefault(e.checkpoint, []).append(e)
    out = {}
    for key, ckpts in by_run.items():
        have = [{b for e in members for b in e.benchmarks} for members in ckpts.values()]
        common = set.intersection(*have)
        benches = tuple(PAPER_BENCHMARKS) if set(PAPER_BENCHMARKS) <= common else tuple(sorted(common))
        scores = []
        for name, members in ckpts.items():
            steps = [e.step for e in members if e.step is not None]
            scores.append(CheckpointScore(members[0].run or "", name, max(steps) if steps else None,
                                          paper_average(members, benches), benches, tuple(members)))
        out[key] = sorted(scores, key=_order)
    return out


def best_checkpoint(scores: Sequence[CheckpointScore]) -> CheckpointScore:
    """The checkpoint of one run with the highest Average; a tie goes to the earlier one."""
    if not scores:
        raise SteerError("no evaluated checkpoints to choose from; evaluate them with steer eval RUN --checkpoints all")
    if any(s.average is None for s in scores):
        raise SteerError(f"the evaluated checkpoints of {scores[0].run} share no benchmark, so their Averages "
                         "cannot be compared; evaluate them on the same benchmarks")
    ordered = sorted(scores, key=_order)
    return max(ordered, key=lambda s: (s.average, -ordered.index(s)))


def last_checkpoint(scores: Sequence[CheckpointScore]) -> CheckpointScore:
    """final/ where it was evaluated, else the highest step."""
    return sorted(scores, key=_order)[-1]


def best_checkpoint_of_run(run_dir: str | Path) -> CheckpointScore:
    """The best checkpoint of one training run (``best_checkpoint``), from the eval summaries of its
    checkpoints under ``<run>/eval/`` (``steer eval RUN --checkpoints all`` writes them there)."""
    run_dir = Path(run_dir).expanduser().resolve()
    evals = collect([run_dir / "eval"]).evals if (run_dir / "eval").is_dir() else []
    mine = [e for e in evals if e.as_trained and e.run and e.checkpoint and Path(e.run).resolve() == run_dir]
    groups = checkpoint_scores(mine)
    if not groups:
        raise SteerError(f"no evaluation of the checkpoints of {run_dir} under {run_dir / 'eval'}; run "
                         f"steer eval {run_dir} --checkpoints all first")
    if len(groups) > 1:
        raise SteerError(f"the checkpoints of {run_dir} were evaluated under several protocols (temperatures) in "
                         f"{run_dir / 'eval'}; keep one there to choose by")
    return best_checkpoint(next(iter(groups.values())))


@dataclass
class Selection:
    """What ``select`` did, for the tables' captions: a phrase for the title and notes."""

    caption: str = ""
    notes: tuple[str, ...] = ()


def _run_labels(runs: Sequence[str]) -> dict[str, str]:
    """Each run's path below the runs' common directory (the run's name when there is one run)."""
    paths = {r: Path(r) for r in runs}
    if len(set(paths.values())) < 2:
        return {r: p.name or r for r, p in paths.items()}
    common = Path(os.path.commonpath([str(p) for p in paths.values()]))
    return {r: str(p.relative_to(common)) if p != common else p.name for r, p in paths.items()}


def select(results: Results, mode: Optional[str] = None) -> tuple[Results, Selection]:
    """``results`` with each run's checkpoints reduced as ``mode`` says (final when None; see the
    module docstring), and how, for the captions."""
    mode = mode or "final"
    if mode not in SELECT_MODES:
        raise SteerError(f"--select must be final, best or mean, got {mode!r}")
    groups = checkpoint_scores([e for e in results.evals if e.as_trained])
    several = any(len(scores) > 1 for scores in groups.values())
    if mode == "mean" or not groups:
        caption = "; each run's evaluated checkpoints averaged" if mode == "mean" and several else ""
        return results, Selection(caption)
    chosen = [(best_checkpoint if mode == "best" else last_checkpoint)(scores) for scores in groups.values()]
    keep = {id(e) for c in chosen for e in c.summaries}
    evals = [e for e in results.evals if not (e.as_trained and e.run and e.checkpoint) or id(e) in keep]
    if not several:
        return replace(results, evals=evals), Selection()
    if mode == "final":
        return replace(results, evals=evals), Selection("; each run's last checkpoint")
    labels = _run_labels([c.run for c in chosen])
    picks = ", ".join(f"{labels[c.run]}: {c.checkpoint} ({100 * c.average:.1f})" for c in chosen
                      if c.average is not None)
    return replace(results, evals=evals), Selection(
        "; each run's checkpoint with the best Avg. on these benchmarks: selected on the test set, as the "
        "paper's code does", (f"checkpoint per run (its Avg.): {picks}",))
