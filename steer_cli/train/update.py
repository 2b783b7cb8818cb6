"""The policy-gradient backward pass over one rollout batch (shared by ``train`` and ``bench``)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from steer_cli.train import batch
from steer_cli.train.objective import kl_penalty, policy_loss

Sequence_ = tuple[Sequence[int], Sequence[int], float]  # (prompt ids, completion ids, advantage)


def accumulate_policy_gradients(
    trainable: Any,
    seqs: Sequence[Sequence_],
    *,
    global_tokens: float,
    temperature: float,
    micro_batch_size: int,
    pad_id: int,
    device: Any,
    kl_coef: float = 0.0,
    train_mode: bool = False,
    logprob_chunk_tokens: int = 0,
    min_micro_batches: int = 0,
) -> tuple[float, float]:
    """Backward of -sum_i A_i sum_t log pi / global_tokens (+ kl_coef * k3 KL), micro-batch by micro-batch.

    Gradients accumulate in the trainable parameters; returns the summed loss and KL values.
    ``train_mode`` puts the model in train mode for the pass (needed for gradient checkpointing);
    ``logprob_chunk_tokens`` bounds the logits held at once (``batch.completion_logprobs``).
    ``min_micro_batches`` pads with passes of weight zero up to that many micro-batches: under FSDP
    every pass is a collective, so all processes must run as many.
    """
    model = trainable.model
    chunks = [seqs[start:start + micro_batch_size] for start in range(0, len(seqs), micro_batch_size)]
    # A one-token pair with advantage 0 (and no KL weight) adds exactly nothing to the gradient.
    padding = [[([pad_id], [pad_id], 0.0)]] * max(0, min_micro_batches - len(chunks))
    refs: list[torch.Tensor] = []
    if kl_coef > 0:
        # All reference log-probs first, in one pass: an offloaded reference copy (full
        # fine-tuning) then moves to the device once per step, not once per micro-batch.
        with torch.no_grad(), trainable.reference() as reference, trainable.autocast():
            for chunk in chunks + padding:
                packed = batch.pack_left([c[0] for c in chunk], [c[1] for c in chunk], pad_id).to(device)
                refs.append(batch.completion_logprobs(reference, packed, temperature, logprob_chunk_tokens))
    if train_mode:
        model.train()
    loss_sum, kl_sum = 0.0, 0.0
    try:
        for index, chunk in enumerate(chunks + padding):
            real = index < len(chunks)
            packed = batch.pack_left([c[0] for c in chunk], [c[1] for c in chunk], pad_id).to(device)
            adv = torch.tensor([c[2] for c in chunk], dtype=torch.float32, device=device)
            with trainable.autocast():
                logp = batch.completion_logprobs(model, packed, temperature, logprob_chunk_tokens)
            mask = packed.completion_mask
            loss = policy_loss((logp * mask).sum(-1), adv, global_tokens)
            if kl_coef > 0:
                kl = kl_penalty(logp, refs[index], mask if real else torch.zeros_like(mask), global_tokens)
                kl_sum += float(kl.detach())
                loss = loss + kl_coef * kl
            loss.backward()
            loss_sum += float(loss.detach())
    finally:
        model.eval()
    return loss_sum, kl_sum
