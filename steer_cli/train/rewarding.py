"""One step's rewards from the grader: math and exact map right / wrong to ``train.reward_correct``
/ ``train.reward_wrong``; a plug-in's float is the reward itself, and a call that fails or overruns
gets ``train.reward_wrong`` (and is counted)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from steer_cli.rewards.plugins import parse_reward, reward_sha256
from steer_cli.rewards.texts import reward_texts
from steer_cli.settings import Settings


def record_reward(s: Settings) -> None:
    """Set ``train.reward_sha256`` (the plug-in file's hash; None for math/exact) before the output
    directory is checked: it is written into settings.yaml, so --resume (``diff_settings``) refuses
    an edited plug-in."""
    s.train.reward_sha256 = reward_sha256(parse_reward(s.train.reward))


def step_rewards(grader: Any, s: Settings, examples: Sequence[Any], groups: Sequence[Sequence[Any]],
                 tokenizer: Any) -> tuple[torch.Tensor, Optional[torch.Tensor], int]:
    """(rewards [prompts, n] float32, correctness [prompts, n] or None for a plug-in, how many
    items failed: plug-in calls that raised or overran, math grades that timed out)."""
    n = len(groups[0]) if groups else 0
    texts = reward_texts([c for g in groups for c in g], tokenizer, s.train.reward)
    if getattr(grader, "plugin", False):
        scores = grader.score([(t, examples[i // n].answer, examples[i // n].row) for i, t in enumerate(texts)])
        rewards = torch.tensor([s.train.reward_wrong if x.value is None else x.value for x in scores],
                               dtype=torch.float32).view(len(examples), n)
        return rewards, None, sum(x.value is None for x in scores)
    grades = grader.grade([(t, examples[i // n].answer) for i, t in enumerate(texts)])
    correct = torch.tensor([g.correct for g in grades], dtype=torch.bool).view(len(examples), n)
    rewards = torch.where(correct, s.train.reward_correct, s.train.reward_wrong).to(torch.float32)
    return rewards, correct, sum(g.timed_out for g in grades)
