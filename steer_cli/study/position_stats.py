"""Per-position comparison of two next-token distributions, streamed in chunks of rows (pure math).

P is the reference (base, or the study's reference patch), Q the compared configuration; both are
``softmax(logits / temperature)``, taken in float64. For each row (position): KL(P || Q), the
tokens most promoted and most suppressed (Delta = q - p), both argmaxes, the entropies, and p and
q of named tokens. Only [chunk, vocabulary] is ever held, and ``DeltaSums`` keeps the vocabulary's
Delta summed over rows (one [V] vector per group of positions, not one per sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

# Rows x vocabulary of one float64 chunk: 2**25 values = 256 MB per tensor held at once.
CHUNK_VALUES = 1 << 25


@dataclass
class RowStats:
    """Statistics of n rows (numpy, one entry per row; [n, k] for the top tokens)."""

    kl: np.ndarray
    top_ids: np.ndarray
    top_delta: np.ndarray
    bottom_ids: np.ndarray
    bottom_delta: np.ndarray
    argmax_p: np.ndarray
    argmax_q: np.ndarray
    entropy_p: np.ndarray
    entropy_q: np.ndarray
    token_p: np.ndarray  # [n, len(tokens)]
    token_q: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence["RowStats"]) -> "RowStats":
        return cls(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__})

    def __len__(self) -> int:
        return int(self.kl.shape[0])


def chunk_rows(vocab: int, budget: int = CHUNK_VALUES) -> int:
    return max(1, budget // max(1, vocab))


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(logits.to(torch.float64) / temperature, dim=-1)


def compare_rows(p_logits: torch.Tensor, q_logits: torch.Tensor, *, temperature: float = 1.0, k: int = 5,
                 tokens: Sequence[int] = (), delta_sink: Optional[Callable[[torch.Tensor], None]] = None) -> RowStats:
    """Statistics of each row of two [n, V] logit matrices (one chunk); ``delta_sink`` receives
    the [n, V] float64 Delta before it is dropped (for ``DeltaSums``)."""
    lp, lq = _log_probs(p_logits, temperature), _log_probs(q_logits, temperature)
    p, q = lp.exp(), lq.exp()
    # 0 * log 0 = 0: rows of tokens the reference gives no mass (masked logits) add nothing.
    kl = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1)
    ent_p = -torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(-1)
    ent_q = -torch.where(q > 0, q * lq, torch.zeros_like(q)).sum(-1)
    delta = q - p
    k = min(k, delta.shape[-1])
    top = delta.topk(k, dim=-1)
    bottom = delta.topk(k, dim=-1, largest=False)
    if delta_sink is not None:
        delta_sink(delta)
    ids = torch.tensor(list(tokens), dtype=torch.long, device=p.device)

    def np_(x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    return RowStats(kl=np_(kl), top_ids=np_(top.indices), top_delta=np_(top.values), bottom_ids=np_(bottom.indices),
                    bottom_delta=np_(bottom.values), argmax_p=np_(p.argmax(-1)), argmax_q=np_(q.argmax(-1)),
                    entropy_p=np_(ent_p), entropy_q=np_(ent_q), token_p=np_(p[:, ids]), token_q=np_(q[:, ids]))


def stream_rows(p_rows: torch.Tensor, q_rows: torch.Tensor, to_logits: Callable[[torch.Tensor], torch.Tensor], *,
                vocab: int, temperature: float = 1.0, k: int = 5, tokens: Sequence[int] = (),
                delta_sink: Optional[Callable[[int, torch.Tensor], None]] = None) -> RowStats:
    """``compare_rows`` over [n, d] final hidden rows, ``to_logits`` applied chunk by chunk;
    ``delta_sink(first row of the chunk, Delta)``."""
    step = chunk_rows(vocab)
    parts = []
    for start in range(0, p_rows.shape[0], step):
        sink = None if delta_sink is None else (lambda d, s=start: delta_sink(s, d))
        parts.append(compare_rows(to_logits(p_rows[start:start + step]), to_logits(q_rows[start:start + step]),
                                  temperature=temperature, k=k, tokens=tokens, delta_sink=sink))
    return RowStats.concat(parts)


@dataclass
class DeltaSums:
    """Delta summed over rows, per group of positions ("first" generated position, "rest")."""

    vocab: int
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, group: str, delta: torch.Tensor) -> None:
        if delta.shape[0] == 0:
            return
        if group not in self.sums:
            self.sums[group] = torch.zeros(self.vocab, dtype=torch.float64)
            self.counts[group] = 0
        self.sums[group] += delta.sum(0).to("cpu", torch.float64)
        self.counts[group] += int(delta.shape[0])

    def mean(self, group: str) -> Optional[torch.Tensor]:
        if not self.counts.get(group):
            return None
        return self.sums[group] / self.counts[group]


def quantiles(values: Sequence[float] | np.ndarray) -> Optional[dict[str, float]]:
    """n, mean, median, q25, q75, min, max of finite values; None when there are none."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None
    q25, med, q75 = np.quantile(x, [0.25, 0.5, 0.75])
    return {"n": int(x.size), "mean": float(x.mean()), "median": float(med), "q25": float(q25),
            "q75": float(q75), "min": float(x.min()), "max": float(x.max())}


def nan_pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> dict[str, Optional[float]]:
    """Pearson r, least-squares slope and intercept of y on x over the pairs where both are finite
    (the reference's ``np.corrcoef`` gave NaN as soon as one pair was missing); None where fewer
    than 2 pairs remain or one side is constant."""
    a, b = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    out: dict[str, Optional[float]] = {"n": int(a.size), "r": None, "slope": None, "intercept": None}
    if a.size < 2 or np.ptp(a) == 0:
        return out
    slope, intercept = np.polyfit(a, b, 1)
    out["slope"], out["intercept"] = float(slope), float(intercept)
    if np.ptp(b) > 0:
        out["r"] = float(np.corrcoef(a, b)[0, 1])
    return out
