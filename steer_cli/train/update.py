"""The policy-gradient backward pass over one rollout batch (shared by ``train`` and ``bench``)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from steer_cli.train import batch
from steer_cli.train.objective import k3_kl, kl_penalty, policy_loss

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
    entries: Optional[Sequence[int]] = None,
    entry_tokens: Optional[Sequence[float]] = None,
    set_rows: Optional[Callable[[list[int]], None]] = None,
) -> tuple[float, float] | tuple[list[float], list[float]]:
    """Backward of -sum_i A_i sum_t log pi / global_tokens (+ kl_coef * k3 KL), micro-batch by micro-batch.

    Gradients accumulate in the trainable parameters; returns the summed loss and KL values.
    ``train_mode`` puts the model in train mode for the pass (needed for gradient checkpointing);
    ``logprob_chunk_tokens`` bounds the logits held at once (``batch.completion_logprobs``).
    ``min_micro_batches`` pads with passes of weight zero up to that many micro-batches: under FSDP
    every pass is a collective, so all processes must run as many.

    Several runs in one pass (a vector bank, ``train.run``): ``entries[i]`` is the run of
    ``seqs[i]``, whose loss is divided by that run's own token count ``entry_tokens[entry]``;
    ``set_rows`` gets each micro-batch's entries before its passes (the bank's row index), and
    the return value is each run's (loss sums, KL sums).
    """
    if entries is not None:
        return _accumulate_runs(trainable, seqs, entries, entry_tokens, set_rows, temperature=temperature,
                                micro_batch_size=micro_batch_size, pad_id=pad_id, device=device, kl_coef=kl_coef,
                                train_mode=train_mode, logprob_chunk_tokens=logprob_chunk_tokens)
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


def _accumulate_runs(trainable: Any, seqs: Sequence[Sequence_], entries: Sequence[int],
                     entry_tokens: Optional[Sequence[float]], set_rows: Optional[Callable[[list[int]], None]], *,
                     temperature: float, micro_batch_size: int, pad_id: int, device: Any, kl_coef: float,
                     train_mode: bool, logprob_chunk_tokens: int) -> tuple[list[float], list[float]]:
    """``accumulate_policy_gradients`` for rows of several runs: the loss is the sum over runs of
    each run's own objective (sum_i A_i sum_t log pi / that run's tokens), so the backward passes
    give every run exactly its gradient (the bank's sink keeps them apart)."""
    if entry_tokens is None or set_rows is None:
        raise ValueError("entries need entry_tokens and set_rows")
    model = trainable.model
    runs = len(entry_tokens)
    # Micro-batches never mix runs: on CPU a row's gradient depends in its last bits on the rows
    # beside it in a pass (3.6e-11 on the demo), so each run is cut exactly as it would be alone.
    chunks = []
    for run in range(runs):
        mine = [i for i, e in enumerate(entries) if e == run]
        chunks += [mine[start:start + micro_batch_size] for start in range(0, len(mine), micro_batch_size)]
    loss_sums, kl_sums = [0.0] * runs, [0.0] * runs
    tokens = torch.tensor([float(t) for t in entry_tokens], dtype=torch.float32)

    def packed_of(chunk: list[int]) -> Any:
        return batch.pack_left([seqs[i][0] for i in chunk], [seqs[i][1] for i in chunk], pad_id).to(device)

    refs: list[torch.Tensor] = []
    if kl_coef > 0:
        with torch.no_grad(), trainable.reference() as reference, trainable.autocast():
            for chunk in chunks:
                set_rows([entries[i] for i in chunk])
                refs.append(batch.completion_logprobs(reference, packed_of(chunk), temperature, logprob_chunk_tokens))
    if train_mode:
        model.train()
    try:
        for index, chunk in enumerate(chunks):
            rows = [entries[i] for i in chunk]
            set_rows(rows)
            packed = packed_of(chunk)
            adv = torch.tensor([seqs[i][2] for i in chunk], dtype=torch.float32, device=device)
            per_row_tokens = tokens[rows].to(device)
            with trainable.autocast():
                logp = batch.completion_logprobs(model, packed, temperature, logprob_chunk_tokens)
            mask = packed.completion_mask
            row_loss = -(adv * (logp * mask).sum(-1)) / per_row_tokens
            if kl_coef > 0:
                row_kl = (k3_kl(logp, refs[index]) * mask).sum(-1) / per_row_tokens
                row_loss = row_loss + kl_coef * row_kl
                for r, v in zip(rows, row_kl.detach().tolist()):
                    kl_sums[r] += v
            row_loss.sum().backward()
            for r, v in zip(rows, row_loss.detach().tolist()):
                loss_sums[r] += v
    finally:
        model.eval()
    return loss_sums, kl_sums
