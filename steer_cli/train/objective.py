"""The RL objective as pure functions: advantages, token log-probs, the policy loss, k3 KL.

Shapes: rewards and advantages are [groups, n] (one row per prompt); per-sequence quantities are
[batch]; per-token ones [batch, time] with a 0/1 mask of completion tokens.
"""

from __future__ import annotations

import torch

ADVANTAGES = ("rloo", "mean", "mean_std")


def group_advantages(rewards: torch.Tensor, kind: str = "rloo", eps: float = 1e-4) -> torch.Tensor:
    """Advantages within each prompt's group of ``n`` completions.

    - ``rloo``: r_i minus the mean of the *other* rewards of the group (the reference code).
    - ``mean``: r_i minus the group mean (the paper's appendix; = rloo x (n-1)/n).
    - ``mean_std``: (r_i - mean) / (std + eps), GRPO's normalisation (unbiased std).
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [groups, n], got {tuple(rewards.shape)}")
    n = rewards.shape[1]
    rewards = rewards.to(torch.float64)
    mean = rewards.mean(dim=1, keepdim=True)
    if kind == "rloo":
        if n < 2:
            raise ValueError("rloo needs at least 2 completions per prompt")
        baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)
        adv = rewards - baseline
    elif kind == "mean":
        adv = rewards - mean
    elif kind == "mean_std":
        std = rewards.std(dim=1, keepdim=True, unbiased=True) if n > 1 else torch.zeros_like(mean)
        adv = (rewards - mean) / (std + eps)
    else:
        raise ValueError(f"unknown advantage {kind!r}; choose one of {ADVANTAGES}")
    return adv.to(torch.float32)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[target] per position, computed in float32. [B, T, V] -> [B, T]."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def policy_loss(seq_logprobs: torch.Tensor, advantages: torch.Tensor, total_tokens: int | float) -> torch.Tensor:
    """-sum_i A_i * sum_t log pi(y_it) / total_tokens.

    ``total_tokens`` is the number of generated tokens in the whole global batch (all processes,
    all micro-batches), so summing this over micro-batches and processes gives the token-level
    mean of the reference implementation.
    """
    return -(advantages.to(seq_logprobs.dtype) * seq_logprobs).sum() / float(total_tokens)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
               total_tokens: int | float) -> torch.Tensor:
    """Sum of per-token k3 over completion tokens, divided by the global token count."""
    return (k3_kl(logprobs, ref_logprobs) * mask).sum() / float(total_tokens)


class _ChunkedLogprobs(torch.autograd.Function):
    """log softmax(h W^T / T)[target] row by row in chunks, never holding all [N, V] logits.

    The forward keeps only the log-normalisers; the backward recomputes each chunk's logits, so
    memory is O(chunk x V) instead of the ~3 x N x V float32 tensors of the direct computation,
    for one more unembedding matmul.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk):  # type: ignore[override]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for s in range(0, hidden.shape[0], chunk):
            logits = (hidden[s:s + chunk] @ weight.T).float()
            if temperature != 1.0:
                logits = logits / temperature
            lse[s:s + chunk] = torch.logsumexp(logits, dim=-1)
            out[s:s + chunk] = logits.gather(-1, targets[s:s + chunk, None]).squeeze(-1) - lse[s:s + chunk]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        # Backward recomputes the logits under the same autocast as this forward (master weights).
        kind = hidden.device.type
        ctx.autocast = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if ctx.autocast is None:
            return _ChunkedLogprobs._backward(ctx, grad_out)
        with torch.autocast(ctx.saved_tensors[0].device.type, dtype=ctx.autocast):
            return _ChunkedLogprobs._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):  # type: ignore[no-untyped-def]
        hidden, weight, targets, lse = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk]
            logits = (h @ weight.T).float()
            if temperature != 1.0:
                logits = logits / temperature
            g = grad_out[s:s + chunk].float()[:, None]
            # d logp[target] / d logits = onehot(target) - softmax, then through the division by T
            grad_logits = torch.exp(logits - lse[s:s + chunk, None]).mul_(-g)
            grad_logits.scatter_add_(-1, targets[s:s + chunk, None], g)
            if temperature != 1.0:
                grad_logits = grad_logits / temperature
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[s:s + chunk] = (grad_logits @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ h).float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def chunked_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           temperature: float = 1.0, chunk: int = 1024) -> torch.Tensor:
    """``token_logprobs(hidden @ weight.T, targets, temperature)`` in row chunks of ``chunk``.

    hidden [..., d], weight [V, d] (an unembedding without bias), targets [...] -> [...] float32.
    """
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    shape = targets.shape
    flat = _ChunkedLogprobs.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                  float(temperature), int(chunk))
    return flat.reshape(shape)
