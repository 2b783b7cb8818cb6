"""Packing prompt+completion pairs for the update pass, and their per-token log-probs.

Sequences are left-padded so every completion ends at the last position: the model then needs
logits for the last ``max_completion + 1`` positions only (``logits_to_keep``), which saves the
unembedding over prompt tokens. Position ids follow the attention mask, as in ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from steer_cli.train.fsdp import is_sharded, logprob_head
from steer_cli.train.objective import chunked_token_logprobs, token_logprobs


@dataclass
class Packed:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, C] completion tokens, right-aligned
    completion_mask: torch.Tensor  # [B, C] 1 on real completion tokens

    def to(self, device: Any) -> "Packed":
        return Packed(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids,
                                                self.targets, self.completion_mask)))


def pack_left(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int) -> Packed:
    if len(prompts) != len(completions) or not prompts:
        raise ValueError("need one completion per prompt and at least one pair")
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
    width = max(len(s) for s in seqs)
    comp_width = max(1, max(len(c) for c in completions))
    batch = len(seqs)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    comp_mask = torch.zeros((batch, comp_width), dtype=torch.float32)
    for row, (seq, comp) in enumerate(zip(seqs, completions)):
        input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        attention[row, width - len(seq):] = 1
        if len(comp):
            comp_mask[row, comp_width - len(comp):] = 1.0
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    targets = input_ids[:, width - comp_width:]
    return Packed(input_ids, attention, position_ids, targets, comp_mask)


# Config keys of models whose logits are more than ``lm_head(hidden)`` (soft-capping, scaling):
# those keep the direct computation.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logits_scaling", "logit_scale", "output_multiplier_scale")


def split_unembedding(model: Any) -> tuple[Any, torch.Tensor] | None:
    """(decoder body, unembedding weight) where logits are exactly ``body(...) @ weight.T``, else None."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    body = getattr(base, "base_model", None)
    head = base.get_output_embeddings() if callable(getattr(base, "get_output_embeddings", None)) else None
    if body is None or body is base or type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    if any(getattr(base.config, key, None) not in (None, 1, 1.0) for key in _LOGIT_TRANSFORMS):
        return None
    return body, head.weight


def completion_logprobs(model: Any, packed: Packed, temperature: float = 1.0, chunk_tokens: int = 0) -> torch.Tensor:
    """Per-token log-probs of the completion tokens under ``model`` (masked positions are junk).

    ``chunk_tokens > 0`` computes them over the vocabulary that many tokens at a time (see
    ``objective.chunked_token_logprobs``) where the model's logits are a plain unembedding.
    """
    keep = packed.targets.shape[1] + 1
    inputs = dict(input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                  position_ids=packed.position_ids, use_cache=False)
    split = split_unembedding(model) if chunk_tokens > 0 else None
    if split is not None:
        if is_sharded(model):
            # The head's weight is whole only inside the sharded root's forward: compute there.
            with logprob_head(model, packed.targets, temperature, chunk_tokens):
                return model(**inputs, logits_to_keep=keep).logits
        body, weight = split
        hidden = body(**inputs).last_hidden_state[:, -keep:-1]
        return chunked_token_logprobs(hidden, weight, packed.targets, temperature, chunk_tokens)
    logits = model(**inputs, logits_to_keep=keep).logits[:, -keep:-1]
    return token_logprobs(logits, packed.targets, temperature)
