"""What a reward reads of each completion (the trainer's and the evaluation's shared rule)."""

from __future__ import annotations

from typing import Any, Sequence

from steer_cli.rollout.base import content_text


def reward_texts(completions: Sequence[Any], tokenizer: Any, reward: str) -> list[str]:
    """What a reward reads of each completion: math grades the text as decoded (stop token
    included, as it always has); exact and plug-ins get it without the stop token that ended it."""
    if reward == "math":
        return [c.text for c in completions]
    return [content_text(c, tokenizer) for c in completions]
