"""The policy-gradient backward pass over one rollout batch (shared by ``train`` and ``bench``)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

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

    Several runs (a vector bank, ``train.run``): ``entries[i]`` is the run of ``seqs[i]``, whose
    loss is divided by that run's own token count ``entry_tokens[run]`` (``global_tokens`` is then
    unused); ``set_rows`` gets each micro-batch's entries before its passes (the bank's row index),
    and the return value is each run's (loss sums, KL sums). One run is the one-entry case: the
    same micro-batches and the same arithmetic as a run of a several-run job.
    """
    several = entries is not None
    if several and (entry_tokens is None or set_rows is None):
        raise ValueError("entries need entry_tokens and set_rows")
    run_of = list(entries) if several else [0] * len(seqs)
    tokens = [float(t) for t in entry_tokens] if several else [float(global_tokens)]
    # Micro-batches never mix runs: on CPU a row's gradient depends in its last bits on the rows
    # beside it in a pass (3.6e-11 on the demo), so each run is cut exactly as it would be alone.
    chunks: list[tuple[int, list[Sequence_]]] = []
    for run in range(len(tokens)):
        mine = [seq for seq, r in zip(seqs, run_of) if r == run]
        chunks += [(run, mine[start:start + micro_batch_size]) for start in range(0, len(mine), micro_batch_size)]
    real = len(chunks)
    # A one-token pair with advantage 0 (and no KL weight) adds exactly nothing to the gradient.
    chunks += [(0, [([pad_id], [pad_id], 0.0)])] * max(0, min_micro_batches - real)

    def packed_of(run: int, chunk: list[Sequence_]) -> Any:
        if set_rows is not None:
            set_rows([run] * len(chunk))
        return batch.pack_left([c[0] for c in chunk], [c[1] for c in chunk], pad_id).to(device)

    model = trainable.model
    refs: list[torch.Tensor] = []
    if kl_coef > 0:
        # All reference log-probs first, in one pass: an offloaded reference copy (full
        # fine-tuning) then moves to the device once per step, not once per micro-batch.
        with torch.no_grad(), trainable.reference() as reference, trainable.autocast():
            for run, chunk in chunks:
                refs.append(batch.completion_logprobs(reference, packed_of(run, chunk), temperature,
                                                      logprob_chunk_tokens))
    if train_mode:
        model.train()
    loss_sums, kl_sums = [0.0] * len(tokens), [0.0] * len(tokens)
    try:
        for index, (run, chunk) in enumerate(chunks):
            packed = packed_of(run, chunk)
            adv = torch.tensor([c[2] for c in chunk], dtype=torch.float32, device=device)
            with trainable.autocast():
                logp = batch.completion_logprobs(model, packed, temperature, logprob_chunk_tokens)
            mask = packed.completion_mask
            loss = policy_loss((logp * mask).sum(-1), adv, tokens[run])
            if kl_coef > 0:
                kl = kl_penalty(logp, refs[index], mask if index < real else torch.zeros_like(mask), tokens[run])
                kl_sums[run] += float(kl.detach())
                loss = loss + kl_coef * kl
            loss.backward()
            loss_sums[run] += float(loss.detach())
    finally:
        model.eval()
    return (loss_sums, kl_sums) if several else (loss_sums[0], kl_sums[0])
