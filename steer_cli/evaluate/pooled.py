"""Several targets in one hf generation batch (study grids): each row steered by its own target's
vectors through the steering handle's vector bank.

Targets that differ only in their vectors, scale and layer subset (base or steering, same
protocol, prefill and steering place) form a pool of at most ``eval.pool_cells``. A pool's bank
holds one entry per target, ``scaled_vectors`` of its file on its kept layers, and a layer mask
of those layers (a base target: an entry that steers no layer), so a row gets exactly the adds
it would get with that target's own hooks. Every sample keeps its own ``sample_seed`` and the hf
backend draws it from that seed alone, so a target's samples are those it gets evaluated by
itself; each target's shards are written as they finish, as in ``run_shards`` (both go through ``generation.stream_shards``). A batch holds
problems of several targets up to ``eval.pool_rows`` rows (``pooled_batch_groups``), never fewer
problems than one target's own batch: pooling fills small batches (one sample per problem) and
leaves large ones (32 samples per AIME problem) as they are.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from steer_cli.evaluate.generation import BenchInputs, stream_shards
from steer_cli.evaluate.shards import Shard
from steer_cli.patching.steering import attach_steering
from steer_cli.patching.strength import kept_layers, scaled_vectors
from steer_cli.rollout.hf import HFBackend


def pool_key(plan: Any) -> Optional[tuple[Any, ...]]:
    """What targets of one pool share (None: the target is never pooled: adapters, checkpoints)."""
    t, p = plan.target, plan.proto
    if t.setup not in ("base", "steering"):
        return None
    return (p.temperature, p.top_p, tuple(p.seeds), p.max_new_tokens, p.max_seq_length, p.samples_setting,
            t.prefill)


def pools(plans: Sequence[Any], size: int) -> list[list[int]]:
    """The plans (indices) generated together, in order of their first member: plans of one
    ``pool_key`` and steering place (a base target joins the first place of its key), cut into
    pools of at most ``size``; a plan that pools with nothing is a pool of one."""
    by_key: dict[Any, dict[Optional[str], list[int]]] = {}
    alone: list[list[int]] = []
    for i, plan in enumerate(plans):
        key = pool_key(plan)
        if key is None or size <= 1:
            alone.append([i])
            continue
        places = by_key.setdefault(key, {})
        place = plan.vectors.place if plan.vectors is not None else None
        places.setdefault(place, []).append(i)
    out = list(alone)
    for places in by_key.values():
        base = places.pop(None, [])
        groups = list(places.values()) or [[]]
        groups[0] = sorted(base + groups[0])
        for g in groups:
            out += [g[i:i + size] for i in range(0, len(g), size)]
    return sorted(out, key=lambda g: g[0])


def bank_of(plans: Sequence[Any], num_layers: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``[K, num_layers, hidden]`` bank of the plans' scaled vectors and the ``[K, num_layers]``
    mask of the layers each steers (none for a base target)."""
    bank = torch.zeros(len(plans), num_layers, hidden, dtype=torch.float32)
    mask = torch.zeros(len(plans), num_layers, dtype=torch.bool)
    for k, plan in enumerate(plans):
        v = plan.vectors
        if v is None:
            continue
        kept = kept_layers(v.layers, plan.target.layers, num_layers)
        bank[k] = scaled_vectors(v.tensor, plan.target.scale, kept).to(torch.float32)
        mask[k, list(kept)] = True
    return bank, mask


def pooled_batch_groups(batch_prompts: int, targets: int, samples: int, pool_rows: int) -> int:
    """Problems per pooled batch: ``batch_prompts`` per target while the rows (problems x
    ``samples``) stay within ``pool_rows``, and at least ``batch_prompts`` (one target's batch)."""
    return max(batch_prompts, min(batch_prompts * targets, pool_rows // max(1, samples)))


def run_pool(model: Any, tokenizer: Any, batch_prompts: int, grader: Any, plans: Sequence[Any],
             shards: Sequence[Sequence[Shard]], inputs: Sequence[dict[str, BenchInputs]], sampling: Any, *,
             written: Callable[[Shard], None] = lambda shard: None,
             scorer: Optional[Callable[..., list[Any]]] = None, pool_rows: int = 64) -> None:
    """Generate the ``shards`` of every plan (``shards[k]``, ``inputs[k]``: plan ``k``'s) in shared
    batches on ``model`` (the hf base model), rows steered by their plan's bank entry; write each
    shard once its samples are in and call ``written``."""
    place = next((p.vectors.place for p in plans if p.vectors is not None), "layer_output")
    handle = attach_steering(model, None, place=place, trainable=False)
    try:
        bank, mask = bank_of(plans, handle.num_layers, handle.hidden_size)
        handle.set_bank(bank.to(handle.vectors.device), layer_mask=mask)
        # Round-robin over the plans' shards: every plan's first shards are written early.
        order = [(k, plan_shards[si]) for si in range(max((len(s) for s in shards), default=0))
                 for k, plan_shards in enumerate(shards) if si < len(plan_shards)]
        entry = [k for k, shard in order for _ in shard.problems]  # the plan (bank entry) of each request group
        backend = HFBackend(model, tokenizer, batch_prompts=batch_prompts)
        backend.before_batch = lambda batch: handle.set_row_index(torch.tensor([entry[r.group] for r in batch]))
        samples = max((shard.samples for _, shard in order), default=1)
        stream_shards(backend, grader, [(shard, inputs[k][shard.bench], plans[k].target.output_dir) for k, shard in order],
                      sampling, written=written, scorer=scorer,
                      batch_groups=pooled_batch_groups(batch_prompts, len(plans), samples, pool_rows))
    finally:
        handle.remove()
