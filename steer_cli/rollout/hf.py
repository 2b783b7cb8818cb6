"""Rollouts with transformers ``generate``: batched, left-padded, with whatever is attached to the
model (steering hooks, a LoRA) active."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Callable, ContextManager, Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from steer_cli.rollout.base import Completion, SamplingSpec


def chunk_seed(seed: int, first_index: int) -> int:
    """A seed for the chunk of prompts starting at ``first_index`` (stable across processes)."""
    digest = hashlib.sha256(f"{seed}:{first_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def split_completion(ids: Sequence[int], stop_ids: set[int], pad_id: int | None) -> tuple[list[int], str]:
    """Cut generated ids after the first stop token (kept); the rest is padding."""
    out: list[int] = []
    for tok in ids:
        out.append(int(tok))
        if tok in stop_ids:
            return out, "stop"
    # generate pads finished rows; an unfinished row has no padding, but strip defensively
    while out and pad_id is not None and out[-1] == pad_id and pad_id not in stop_ids:
        out.pop()
    return out, "length"


class RowBudgets(StoppingCriteria):
    """Stops each generated row once it holds its own number of new tokens (``budgets``, one per
    row of the batch as ``generate`` expands it), so prompts of one batch keep their own budgets."""

    def __init__(self, budgets: Sequence[int], prompt_width: int) -> None:
        self.budgets = torch.tensor(list(budgets), dtype=torch.long)
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        made = input_ids.shape[1] - self.prompt_width
        return self.budgets.to(input_ids.device) <= made


class HFBackend:
    """``RolloutBackend`` on a transformers model (possibly peft-wrapped, possibly steered)."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_prompts: int = 8,
                 context: Callable[[], ContextManager[Any]] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_prompts = batch_prompts
        # Entered around each generate call: autocast for float32 master weights, a sharded
        # model gathered whole (``Trainable.generation``).
        self.context = context or contextlib.nullcontext

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSpec,
                 *, first_index: int = 0) -> list[list[Completion]]:
        """``first_index`` is the global index of ``prompts[0]``: chunks are seeded by it, so a
        prompt gets the same samples whichever process or batch it lands in (given equal chunks)."""
        results: list[list[Completion]] = []
        with self.context():
            for start in range(0, len(prompts), self.batch_prompts):
                chunk = prompts[start:start + self.batch_prompts]
                results.extend(self._generate_chunk(chunk, sampling.for_prompts(start, start + len(chunk)),
                                                    chunk_seed(sampling.seed, first_index + start)))
        return results

    def _generate_chunk(self, prompts: Sequence[Sequence[int]], sampling: SamplingSpec,
                        seed: int) -> list[list[Completion]]:
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            input_ids[row, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            attention[row, width - len(p):] = 1
        stop_ids = list(sampling.stop_token_ids) or [tok.eos_token_id]
        # Greedy decoding gives one answer; n copies of it keep the [prompt][n] shape.
        copies = sampling.n if sampling.greedy else 1
        budgets = [sampling.budget(i) for i in range(len(prompts))]
        per_row = [b for b in budgets for _ in range(1 if sampling.greedy else sampling.n)]
        criteria = StoppingCriteriaList([RowBudgets(per_row, width)] if len(set(budgets)) > 1 else [])
        # A full GenerationConfig, so a model's own sampling defaults (top_k=50, a repetition
        # penalty ...) never leak into the RL or evaluation protocol.
        config = GenerationConfig(
            max_new_tokens=max(budgets),
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
            num_return_sequences=1 if sampling.greedy else sampling.n,
            do_sample=not sampling.greedy,
            # Neutral values, not None: generate() fills None from the model's own config.
            temperature=1.0 if sampling.greedy else sampling.temperature,
            top_p=1.0 if sampling.greedy else sampling.top_p,
            top_k=0 if sampling.greedy or sampling.top_k <= 0 else sampling.top_k,
            min_p=0.0,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            use_cache=True,
        )
        torch.manual_seed(seed)
        out = self.model.generate(input_ids=input_ids.to(self.device),
                                  attention_mask=attention.to(self.device), generation_config=config,
                                  stopping_criteria=criteria)
        if copies > 1:
            out = out.repeat_interleave(copies, dim=0)
        generated = out[:, width:].tolist()
        stop_set = set(stop_ids)
        grouped: list[list[Completion]] = []
        for row in range(len(prompts)):
            group = []
            for k in range(sampling.n):
                # A row stopped at its own budget is padded after it: cut there first.
                ids, reason = split_completion(generated[row * sampling.n + k][:budgets[row]], stop_set, pad_id)
                text = tok.decode(ids, skip_special_tokens=False)
                group.append(Completion(token_ids=ids, text=text, finish_reason=reason))
            grouped.append(group)
        return grouped
