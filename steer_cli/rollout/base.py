"""The rollout backend interface: one method, ``generate``, plus optional weight syncing."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample completions for a batch of prompts."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    max_new_tokens: int = 512
    stop_token_ids: tuple[int, ...] = ()  # the stop set (data.prompts.stop_token_ids); exactly these stop
    seed: int = 0
    # Per-prompt completion budgets, in prompt order (``completion_budgets``); empty: max_new_tokens each.
    budgets: tuple[int, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def budget(self, index: int) -> int:
        """The completion budget of prompt ``index`` of the generate call."""
        return self.budgets[index] if self.budgets else self.max_new_tokens

    def for_prompts(self, start: int, stop: int) -> "SamplingSpec":
        """This spec for ``prompts[start:stop]`` (budgets sliced to match)."""
        return replace(self, budgets=self.budgets[start:stop]) if self.budgets else self


def completion_budgets(prompt_lengths: Sequence[int], max_new_tokens: Optional[int],
                       max_seq_length: Optional[int]) -> tuple[int, ...]:
    """Each prompt's completion budget, as in the reference code: ``max_seq_length`` minus that
    prompt's own length, capped by ``max_new_tokens`` when that is set; at least 1 token."""
    if max_new_tokens is None and max_seq_length is None:
        raise ValueError("a completion budget needs max_new_tokens or max_seq_length")
    out = []
    for n in prompt_lengths:
        budget = max_new_tokens if max_new_tokens is not None else max_seq_length - n
        if max_seq_length is not None:
            budget = min(budget, max_seq_length - n)
        out.append(max(1, int(budget)))
    return tuple(out)


@dataclass(frozen=True)
class SampleRequest:
    """One sample to draw (evaluation): a prompt, the sample's own seed (None: greedy) and budget.

    Backends draw it from its seed alone, never from what else is generated with it, so a sample
    is the same whichever process, batch or order it lands in. ``group`` ties the samples of one
    prompt together (the hf backend batches whole groups)."""

    prompt: tuple[int, ...]
    seed: Optional[int]
    max_new_tokens: int
    group: int = 0


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


def content_text(completion: Completion, tokenizer: Any) -> str:
    """The completion's text without the stop token that ended it (what reward plug-ins and
    ``steer generate`` show); a completion cut at its budget keeps all its text."""
    if not completion.stopped or not completion.token_ids:
        return completion.text
    return tokenizer.decode(completion.token_ids[:-1], skip_special_tokens=False)


@runtime_checkable
class RolloutBackend(Protocol):
    """Generates ``sampling.n`` completions for each prompt (token ids, no padding).

    Returns one list of ``n`` completions per prompt, in prompt order. Results depend only on the
    prompts, the sampling spec (its seed included) and the current weights/vectors, so a run that
    shards prompts across processes can reproduce a single-process run.
    """

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSpec) -> list[list[Completion]]:
        ...


@runtime_checkable
class SampleBackend(Protocol):
    """Draws independent samples, one per request (evaluation; the hf and vLLM backends)."""

    def stream_samples(self, requests: Sequence[SampleRequest],
                       sampling: SamplingSpec) -> Iterator[tuple[int, Completion]]:
        """Each request's completion, as ``(index in requests, completion)`` in the order they finish;
        ``sampling`` gives temperature, top_p, top_k and the stop set (its n, seed and budgets are
        unused: every request is one sample with its own seed and budget)."""
        ...
