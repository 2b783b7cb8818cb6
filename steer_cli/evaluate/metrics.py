"""Accuracy metrics of an evaluation, as pure functions of a [problems, samples] boolean matrix.

- ``avg@k``: mean over problems of the mean over all k samples (the paper's AVG@32).
- ``pass@1``: mean over problems of the first sample's correctness (the paper's PASS@1).
- ``mean@k``: like avg@k on the first k samples only (the appendix's mean@8).
- Over seeds: mean and population standard deviation (ddof=0), as the reference code reports.
- The paper's Average: per seed, the mean of each benchmark's primary metric; then mean ± std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _matrix(correct: Any) -> np.ndarray:
    m = np.asarray(correct, dtype=bool)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"expected a non-empty [problems, samples] matrix, got shape {m.shape}")
    return m


def avg_at_k(correct: Any) -> float:
    """Mean over problems of the fraction of correct samples (all samples)."""
    return float(_matrix(correct).mean(axis=1).mean())


def pass_at_1(correct: Any) -> float:
    """Fraction of problems whose first sample is correct."""
    return float(_matrix(correct)[:, 0].mean())


def mean_at_k(correct: Any, k: int) -> float:
    """avg@k over the first ``k`` samples (``k`` capped at the number of samples)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    m = _matrix(correct)
    return float(m[:, : min(k, m.shape[1])].mean(axis=1).mean())


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0) of per-seed values."""
    if len(values) == 0:
        raise ValueError("mean_std needs at least one value")
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=0))


def primary_metric(samples: int) -> str:
    """The reported metric for ``samples`` per problem: avg@<samples>, or pass@1 for one sample."""
    return f"avg@{samples}" if samples > 1 else "pass@1"


def seed_metrics(correct: Any, mean_k: int) -> dict[str, float]:
    """Every metric of one (benchmark, seed) result."""
    return {"avg@k": avg_at_k(correct), "pass@1": pass_at_1(correct), "mean@k": mean_at_k(correct, mean_k)}


def primary_value(metrics: Mapping[str, float], metric: str) -> float:
    """The value of ``metric`` ("avg@<k>", "pass@1" or "mean@<k>") in a ``seed_metrics`` dict."""
    if metric == "pass@1":
        return metrics["pass@1"]
    kind = metric.split("@", 1)[0]
    return metrics[f"{kind}@k"]


def benchmark_summary(per_seed: Mapping[int, Any], metric: str, mean_k: int) -> dict[str, Any]:
    """``per_seed``: seed -> correctness matrix. Returns per-seed metrics and mean/std of ``metric``."""
    seeds = {str(s): seed_metrics(m, mean_k) for s, m in per_seed.items()}
    mean, std = mean_std([primary_value(v, metric) for v in seeds.values()])
    return {"per_seed": seeds, "mean": mean, "std": std}


def paper_average(primary_by_benchmark: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{benchmark: {seed: primary metric}}`` -> mean/std over seeds of the per-seed benchmark mean.

    Every benchmark must have the same seeds.
    """
    if not primary_by_benchmark:
        raise ValueError("paper_average needs at least one benchmark")
    seed_sets = {tuple(sorted(v)) for v in primary_by_benchmark.values()}
    if len(seed_sets) != 1:
        raise ValueError(f"benchmarks have different seeds: {sorted(seed_sets)}")
    seeds = seed_sets.pop()
    per_seed = [float(np.mean([v[s] for v in primary_by_benchmark.values()])) for s in seeds]
    mean, std = mean_std(per_seed)
    return {"mean": mean, "std": std}
