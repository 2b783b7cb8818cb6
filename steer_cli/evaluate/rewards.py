"""``steer eval --reward``: every sample also scored with a reward (a plug-in, or math / exact as
1.0 / 0.0), its mean reported beside accuracy.

Each sample of the results files gets ``"reward"`` (None where the plug-in's call failed or
overran); summary.json gets ``"reward": {"name", "sha256"}`` and, per benchmark,
``"reward": {"per_seed", "mean", "std", "errors"}``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from steer_cli.rewards import pool
from steer_cli.rewards.plugins import parse_reward, reward_sha256
from steer_cli.rewards.texts import reward_texts
from steer_cli.settings import Settings


class RewardScorer:
    """A grader for ``eval.reward`` with the run's template and timeouts (``train.grader_*``)."""

    def __init__(self, settings: Settings, tokenizer: Any) -> None:
        self.spec = parse_reward(settings.eval.reward)
        self.sha256 = reward_sha256(self.spec)
        self.tokenizer = tokenizer
        self.grader = pool.Grader(num_workers=settings.train.grader_workers, timeout=settings.train.grade_timeout,
                             template=settings.prompt.template,
                             truncated_box_fallback=settings.train.grade_truncated_box, reward=self.spec.text)

    def check(self, problem: Any) -> None:
        """A plug-in's trial call on the first problem before anything is written (as in training)."""
        if self.grader.plugin:
            self.grader.dry_run([problem.answer, ""], problem.answer, problem.row)

    def __call__(self, completions: Sequence[Any], problems: Sequence[Any]) -> list[Optional[float]]:
        texts = reward_texts(completions, self.tokenizer, self.spec.text)
        if self.grader.plugin:
            return [s.value for s in self.grader.score([(t, p.answer, p.row) for t, p in zip(texts, problems)])]
        return [1.0 if g.correct else 0.0 for g in self.grader.grade([(t, p.answer) for t, p in zip(texts, problems)])]

    def close(self) -> None:
        self.grader.close()

    def describe(self) -> dict[str, Any]:
        return {"name": self.spec.text, "sha256": self.sha256}


def read_rewards(path: Path) -> list[Optional[float]]:
    """Every sample's reward in a finished results file (None where missing or failed)."""
    out: list[Optional[float]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            for sample in json.loads(line).get("samples", []):
                value = sample.get("reward")
                out.append(float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None)
    return out


def lines_rewards(lines: Sequence[dict[str, Any]]) -> list[Optional[float]]:
    return [s.get("reward") for line in lines for s in line["samples"]]


def reward_summary(per_seed: dict[int, Sequence[Optional[float]]]) -> dict[str, Any]:
    """Mean reward per seed (over the samples whose call succeeded), mean ± std over seeds (ddof 0,
    as accuracy), and how many calls failed."""
    means = {}
    errors = 0
    for seed, values in per_seed.items():
        ok = [v for v in values if v is not None]
        errors += len(values) - len(ok)
        means[str(seed)] = statistics.fmean(ok) if ok else None
    present = [v for v in means.values() if v is not None]
    return {"per_seed": means, "mean": statistics.fmean(present) if present else None,
            "std": statistics.pstdev(present) if present else None, "errors": errors}
