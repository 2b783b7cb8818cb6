"""Rollouts with transformers ``generate``: batched, left-padded, with whatever is attached to the
model (steering hooks, a LoRA) active."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from steer_cli.rollout.base import Completion, SampleRequest, SamplingSpec


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


@contextlib.contextmanager
def neutral_generation_config(model: Any) -> Iterator[None]:
    """The model's own generation config (``generation_config.json``) replaced by transformers'
    defaults for the duration: ``generate`` fills settings from it even when handed a full
    ``GenerationConfig``. transformers 5 fills every field left None (``num_beams``,
    ``suppress_tokens`` ...); 4.50-4.57 fill every field *equal to the global default* when the
    file was written by >= 4.50, as every checkpoint saved since is: greedy decoding of a
    Llama-3.1 fine-tune then samples at its T 0.6, top_p 0.9. Every transformers model inside
    ``model`` (a peft wrapper holds one) gets the neutral config; the originals come back after."""
    swapped = [(m, m.generation_config) for m in model.modules()
               if isinstance(vars(m).get("generation_config"), GenerationConfig)]
    try:
        for m, _ in swapped:
            m.generation_config = GenerationConfig()
        yield
    finally:
        for m, own in swapped:
            m.generation_config = own


def generate_exactly(model: Any, config: GenerationConfig, **inputs: Any) -> torch.Tensor:
    """``model.generate(**inputs)`` with ``config`` and nothing from the model's own config."""
    with neutral_generation_config(model):
        return model.generate(generation_config=config, **inputs)


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
        # Called with each batch's requests before it is generated (several training runs in one
        # batch: each row's vector-bank entry is set from its request's group).
        self.before_batch: Callable[[Sequence[SampleRequest]], None] | None = None

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

    def stream_samples(self, requests: Sequence[SampleRequest], sampling: SamplingSpec, *,
                       batch_groups: int | None = None) -> Iterator[tuple[int, Completion]]:
        """One completion per request, each drawn with its own seed (``PerRowSampler``), so a
        sample does not depend on its batch. Batches hold ``batch_groups`` (default
        ``batch_prompts``) groups (prompts) with all their requests, as ``generate`` holds
        ``batch_prompts`` prompts with their n samples."""
        per_batch = batch_groups or self.batch_prompts
        start = 0
        while start < len(requests):
            groups: set[int] = set()
            stop = start
            while stop < len(requests) and (requests[stop].group in groups or len(groups) < per_batch):
                groups.add(requests[stop].group)
                stop += 1
            batch = requests[start:stop]
            if self.before_batch is not None:
                self.before_batch(batch)
            with self.context():
                completions = self._sample_rows(batch, sampling)
            for i, c in enumerate(completions):
                yield start + i, c
            start = stop

    def _inputs(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Left-padded input ids and attention mask, the padded width and the pad id."""
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            input_ids[row, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            attention[row, width - len(p):] = 1
        return input_ids, attention, width, pad_id

    @staticmethod
    def _config(sampling: SamplingSpec, *, max_new_tokens: int, stop_ids: list[int], pad_id: int,
                do_sample: bool, num_return_sequences: int = 1) -> GenerationConfig:
        # A full GenerationConfig, so a model's own sampling defaults (top_k=50, a repetition
        # penalty ...) never leak into the RL or evaluation protocol (generate_exactly hides the
        # model's own config from generate, which would fill these from it otherwise).
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
            num_return_sequences=num_return_sequences,
            do_sample=do_sample,
            # Neutral values, not None: generate() fills None from the model's own config.
            temperature=sampling.temperature if do_sample else 1.0,
            top_p=sampling.top_p if do_sample else 1.0,
            top_k=sampling.top_k if do_sample and sampling.top_k > 0 else 0,
            min_p=0.0,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            use_cache=True,
        )

    def _decode(self, generated: list[list[int]], budgets: Sequence[int], stop_set: set[int],
                pad_id: int) -> list[Completion]:
        out = []
        for row, budget in zip(generated, budgets):
            # A row stopped at its own budget is padded after it: cut there first.
            ids, reason = split_completion(row[:budget], stop_set, pad_id)
            out.append(Completion(token_ids=ids, text=self.tokenizer.decode(ids, skip_special_tokens=False),
                                  finish_reason=reason))
        return out

    def _sample_rows(self, requests: Sequence[SampleRequest], sampling: SamplingSpec) -> list[Completion]:
        input_ids, attention, width, pad_id = self._inputs([r.prompt for r in requests])
        stop_ids = list(sampling.stop_token_ids) or [self.tokenizer.eos_token_id]
        budgets = [r.max_new_tokens for r in requests]
        criteria = StoppingCriteriaList([RowBudgets(budgets, width)] if len(set(budgets)) > 1 else [])
        processors = LogitsProcessorList()
        if not sampling.greedy:
            if any(r.seed is None for r in requests):
                raise ValueError("a sampled request needs its own seed")
            processors.append(PerRowSampler([int(r.seed) for r in requests], sampling, self.device))
        # Decoding is greedy in generate's eyes: the sampler has already made each row's draw the
        # argmax, so generate's own (batch-wide) random number generator is never used.
        config = self._config(sampling, max_new_tokens=max(budgets), stop_ids=stop_ids, pad_id=pad_id,
                              do_sample=False)
        out = generate_exactly(self.model, config, input_ids=input_ids.to(self.device),
                               attention_mask=attention.to(self.device), stopping_criteria=criteria,
                               logits_processor=processors)
        return self._decode(out[:, width:].tolist(), budgets, set(stop_ids), pad_id)

    def _generate_chunk(self, prompts: Sequence[Sequence[int]], sampling: SamplingSpec,
                        seed: int) -> list[list[Completion]]:
        input_ids, attention, width, pad_id = self._inputs(prompts)
        stop_ids = list(sampling.stop_token_ids) or [self.tokenizer.eos_token_id]
        # Greedy decoding gives one answer; n copies of it keep the [prompt][n] shape.
        copies = sampling.n if sampling.greedy else 1
        budgets = [sampling.budget(i) for i in range(len(prompts))]
        per_row = [b for b in budgets for _ in range(1 if sampling.greedy else sampling.n)]
        criteria = StoppingCriteriaList([RowBudgets(per_row, width)] if len(set(budgets)) > 1 else [])
        config = self._config(sampling, max_new_tokens=max(budgets), stop_ids=stop_ids, pad_id=pad_id,
                              do_sample=not sampling.greedy,
                              num_return_sequences=1 if sampling.greedy else sampling.n)
        torch.manual_seed(seed)
        out = generate_exactly(self.model, config, input_ids=input_ids.to(self.device),
                               attention_mask=attention.to(self.device), stopping_criteria=criteria)
        if copies > 1:
            out = out.repeat_interleave(copies, dim=0)
        rows = self._decode(out[:, width:].tolist(), [b for b in budgets for _ in range(sampling.n)],
                            set(stop_ids), pad_id)
        return [rows[i * sampling.n:(i + 1) * sampling.n] for i in range(len(prompts))]


class PerRowSampler(LogitsProcessor):
    """Samples every row of a batch from its own ``torch.Generator``, to be used with greedy
    decoding: temperature, top-k and top-p shape each row's logits, then the exponential race
    (argmax of log p - log E, E ~ Exp(1) drawn from the row's generator: an exact sample from the
    filtered softmax, the way vLLM samples) makes the drawn token the row's argmax. One draw of
    vocabulary size per row and step, so a row's tokens depend only on its seed and its logits."""

    def __init__(self, seeds: Sequence[int], sampling: SamplingSpec, device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature = sampling.temperature
        self.top_p = sampling.top_p
        self.top_k = sampling.top_k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = filter_logits(scores.float() / self.temperature, self.top_k, self.top_p)
        noise = torch.empty_like(scores)
        for row, g in enumerate(self.generators):
            noise[row].exponential_(generator=g)
        return scores - noise.clamp_min_(torch.finfo(noise.dtype).tiny).log()


def filter_logits(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Row-wise top-k then top-p (nucleus) filtering, as transformers' warpers do it (the smallest
    set of tokens whose probability reaches top_p; at least one kept), removed tokens at -inf.
    Stable sorting, so ties are broken the same way in every batch."""
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, dim=-1, descending=False, stable=True)
        remove = ordered.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        remove[..., -1] = False
        scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return scores
