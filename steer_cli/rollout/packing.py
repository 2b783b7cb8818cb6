"""Tensors across vLLM's RPC layers: ``(dtype, shape, raw bytes)``, used on both sides (the engine
in ``vllm`` and the workers in ``vllm_worker``). Torch only: importing it loads no vLLM."""

from __future__ import annotations

import torch


def pack_tensor(tensor: torch.Tensor) -> tuple[str, list[int], bytes]:
    """``(dtype, shape, raw bytes)``: crosses vLLM's RPC layers unchanged (a tensor argument
    arrives in the worker as a decoded list, and only with multiprocessing on)."""
    t = tensor.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    return str(t.dtype).removeprefix("torch."), list(t.shape), raw


def unpack_tensor(packed) -> torch.Tensor:
    dtype, shape, data = packed
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return flat.view(getattr(torch, dtype)).reshape(shape)
