"""The rollout backend interface: one method, ``generate``, plus optional weight syncing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample completions for a batch of prompts."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    max_new_tokens: int = 512
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    """One sampled continuation of a prompt."""

    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (a stop token or EOS ended it, kept in token_ids) or "length"
    meta: dict = field(default_factory=dict)

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stop"


@runtime_checkable
class RolloutBackend(Protocol):
    """Generates ``sampling.n`` completions for each prompt (token ids, no padding).

    Returns one list of ``n`` completions per prompt, in prompt order. Results depend only on the
    prompts, the sampling spec (its seed included) and the current weights/vectors, so a run that
    shards prompts across processes can reproduce a single-process run.
    """

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSpec) -> list[list[Completion]]:
        ...
