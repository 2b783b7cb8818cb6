"""Sharded full fine-tuning with FSDP2 (``torch.distributed.fsdp.fully_shard``), ``train.fsdp``.

Each decoder layer is one FSDP unit and the rest of the model (embedding, final norm, head) the
root unit. Parameters, gradients and AdamW state live sharded, one 1/world slice per process, in
float32 (master weights) when the compute dtype is lower: the forward all-gathers each layer in
the compute dtype (``MixedPrecisionPolicy``) and gradients are reduce-scattered in float32 as sums
(the loss is already normalised by the global token count, as in the unsharded trainer).

Every forward and backward of an FSDP model is a collective, so processes must run the same number
of them: the trainer evens out micro-batch counts (``accumulate_policy_gradients(min_micro_batches)``),
and generation runs with the whole model gathered once, so processes may decode different lengths.

Checkpoints are gathered (``full_state_dict``) and written by the main process in the same layout
as unsharded runs, so eval, extract and merge read them unchanged; resuming scatters them back.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from steer_cli.errors import SteerError
from steer_cli.patching.archs import locate
from steer_cli.train.objective import chunked_token_logprobs


def ensure_process_group(device: torch.device) -> None:
    """FSDP needs a process group; a plain single-process ``steer train --fsdp`` gets one of size 1."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=datetime.timedelta(minutes=30))


def init_restarted_process_group() -> None:
    """Under a torchrun restart (``--max-restarts``), start the process group on keys of this
    attempt only. torchrun keeps one key-value store across restarts, and a new worker would
    otherwise read the previous attempt's addresses and fail to connect ("Connection refused",
    pytorch/pytorch#167288). accelerate then uses this group as it is."""

    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt == "0" or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    store, rank, world = next(dist.rendezvous("env://"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, store=dist.PrefixStore(f"steer/attempt-{attempt}", store), rank=rank,
                            world_size=world)


def fsdp_modules(model: nn.Module) -> list[Any]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: nn.Module) -> bool:
    return bool(fsdp_modules(model))


def shard_model(model: nn.Module, compute_dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Shard ``model`` (float32 or ``compute_dtype`` parameters) in place; returns it."""

    ensure_process_group(device)
    params = {p.dtype for p in model.parameters()}
    mp = MixedPrecisionPolicy()
    if params != {compute_dtype}:
        mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    layers = locate(model).layers
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    for m in fsdp_modules(model):
        # Sum, not mean, over processes: each process's loss is already divided by the global
        # token count (see train.objective.policy_loss).
        m.set_gradient_divide_factor(1.0)
        m.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
    return model


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """The whole model unsharded for the block (generation): no collectives inside, so each
    process may run any number of forward passes; resharded after."""
    mods = fsdp_modules(model)
    if not mods:
        yield
        return
    for m in mods:
        m.unshard()
    model.set_reshard_after_forward(False)
    try:
        yield
    finally:
        # Back to FSDP's defaults: layers reshard after forward, the root (used first in backward) not.
        model.set_reshard_after_forward(True)
        model.set_reshard_after_forward(False, recurse=False)
        for m in mods:
            m.reshard()


@contextlib.contextmanager
def logprob_head(model: nn.Module, targets: torch.Tensor, temperature: float, chunk: int) -> Iterator[None]:
    """Make the unembedding return chunked log-probs of ``targets`` instead of logits.

    Under FSDP the head's weight is whole only inside the root module's forward, so the chunked
    log-softmax (``objective.chunked_token_logprobs``) runs there: the model's ``logits`` output
    becomes [batch, completion] float32 log-probs, and gradients reach the weight through FSDP's
    own hooks. ``model(..., logits_to_keep=C + 1)`` must be called with the shifted window.
    """
    head = locate(model).unembed

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        # A fresh tensor, not a view: FSDP hooks its pre-backward onto the root's output.
        return chunked_token_logprobs(hidden[:, :-1], head.weight, targets, temperature, chunk).clone()

    head.forward = forward
    try:
        yield
    finally:
        del head.forward


def full_state_dict(model: nn.Module, *, to_cpu: bool = True) -> dict[str, torch.Tensor]:
    """Gathered parameters and buffers (a collective: every process calls it); with ``to_cpu`` only
    the main process gets them."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=to_cpu))


def full_weights(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) one parameter at a time, on every process (for a vLLM weight sync)."""
    for name, p in model.named_parameters():
        t = p.full_tensor() if isinstance(p, DTensor) else p.detach()
        yield name, (t.to(dtype) if dtype is not None else t)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state gathered and keyed by parameter name (collective; main process holds it)."""
    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def tied_weights(model: nn.Module) -> dict[str, str]:
    """{tied parameter: the one it shares storage with} (a head tied to the embedding)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return {}
    keys = getattr(model, "_tied_weights_keys", None) or {}
    if isinstance(keys, dict):
        return dict(keys)
    embedding = model.get_input_embeddings().weight
    source = next(n for n, p in model.named_parameters(remove_duplicate=False) if p is embedding)
    return {k: source for k in keys}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Scatter a gathered state dict (read by the main process; others pass {}) into the shards."""
    for target, source in tied_weights(model).items():
        if state and target not in state and source in state:
            state[target] = state[source]
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def save_pretrained_gathered(model: nn.Module, state: dict[str, torch.Tensor], directory: Path,
                             dtype: torch.dtype | None = None) -> None:
    """``save_pretrained`` of a sharded model from its gathered state; config names the real class."""
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    # The gathered dict names a tied head apart from the embedding; checkpoints store it once.
    tied = tied_weights(model)
    state = {k: v for k, v in state.items() if k not in tied}
    model.save_pretrained(str(directory), state_dict=state, safe_serialization=True)
    # fully_shard swaps in a subclass named FSDP<Class>; loaders need the class's own name.
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    config["architectures"] = [unwrapped_class_name(model)]
    if dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def unwrapped_class_name(model: nn.Module) -> str:
    name = type(model).__name__
    return name[len("FSDP"):] if name.startswith("FSDP") else name


def check_fsdp_settings(kind: str, fsdp: bool) -> None:
    if fsdp and kind != "full":
        raise SteerError(
            f"train.fsdp (--fsdp) shards full fine-tuning; setup.kind = {kind} trains "
            f"{'vectors' if kind == 'steering' else 'an adapter'} small enough to replicate - drop --fsdp"
        )


def training_state_bytes(params: list[Any], optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this process holds of the trained parameters, their gradients (as float32 or the
    parameter's dtype) and the optimizer state: under FSDP one shard of each."""
    def local(t: Any) -> Any:
        return t.to_local() if hasattr(t, "to_local") else t

    def nbytes(t: Any) -> int:
        t = local(t)
        return t.numel() * t.element_size()

    out = {"parameters": sum(nbytes(p) for p in params), "gradients": sum(nbytes(p) for p in params),
           "optimizer": sum(nbytes(v) for st in optimizer.state.values() for k, v in st.items()
                            if torch.is_tensor(v) and k != "step")}
    out["total"] = out["parameters"] + out["gradients"] + out["optimizer"]
    return out


def whole(t: Any) -> Any:
    """A DTensor (a sharded parameter or a norm over sharded gradients) as one plain tensor."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t
