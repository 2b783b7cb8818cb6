"""Training data of ``steer train``: problems rendered into prompt token ids, and which of them
each step takes (a seeded permutation per epoch), identical in every process."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from steer_cli.data.datasets import load_train_set
from steer_cli.data.prompts import render_prompt
from steer_cli.data.records import FieldMap
from steer_cli.errors import SteerError
from steer_cli.settings import Settings


@dataclass
class Example:
    id: str
    prompt_ids: list[int]
    answer: str
    row: Any = None  # the data file's record (reward plug-ins receive it)


class DataOrder:
    """Which problems each step takes: a seeded permutation per epoch, concatenated."""

    def __init__(self, size: int, seed: int, shuffle: bool) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if self.shuffle:
                self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            else:
                self._perms[epoch] = np.arange(self.size)
        return self._perms[epoch]

    def indices(self, step: int, per_step: int) -> list[int]:
        start = step * per_step
        return [int(self._perm((start + k) // self.size)[(start + k) % self.size]) for k in range(per_step)]


def load_examples(s: Settings, tokenizer: Any) -> tuple[list[Example], dict[str, int]]:
    fields = None
    if s.data.problem_field or s.data.answer_field or s.data.answer_format:
        fields = FieldMap(problem=s.data.problem_field or "problem", answer=s.data.answer_field or "answer",
                          answer_kind=s.data.answer_format or "plain")
    problems, skipped = load_train_set(s.data.dataset, data_dir=s.data.data_dir, fields=fields,
                                       split=s.data.split, limit=s.data.limit)
    examples, too_long = [], 0
    cap = s.data.max_prompt_tokens
    seq_cap = s.rollout.max_seq_length
    for p in problems:
        ids = render_prompt(tokenizer, p.problem, s.prompt.template, system_prompt=s.prompt.system_prompt,
                            fmt=s.prompt.format, append_to=s.prompt.append_to)
        if (cap and len(ids) > cap) or (seq_cap and len(ids) >= seq_cap):
            too_long += 1
            continue
        examples.append(Example(p.id, ids, p.answer, p.row))
    if not examples:
        raise SteerError(
            f"no usable training problems in {s.data.dataset}: {len(problems)} loaded, {too_long} with prompts "
            "over the length limit (data.max_prompt_tokens / rollout.max_seq_length)"
        )
    return examples, {"problems": len(problems), "skipped_rows": skipped, "too_long": too_long}


def step_seed(seed: int, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f"rollout:{seed}:{step}".encode()).digest()[:4], "little")
