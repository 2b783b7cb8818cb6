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
