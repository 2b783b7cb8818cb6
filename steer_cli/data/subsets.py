"""Seeded random subsets of a problem list, drawn as the reference implementation draws the 500
GSM8K test problems of its Table 4 runs (``subsample_ds`` in its train/rl/policy_model.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def subset_indices(total: int, size: int, seed: int) -> list[int]:
    """``min(size, total)`` distinct indices out of ``range(total)``, in increasing order.

    The draw is the reference's: ``numpy.random.default_rng(seed).choice(range(total), size,
    replace=False)`` with a fresh generator (its GSM8K configs draw no training subset first, so
    the test draw is the generator's first). The reference keeps the drawn order and then shuffles
    again; the order changes no metric, so we keep the benchmark's own.
    """
    if total < 0 or size < 1:
        raise ValueError(f"need total >= 0 and size >= 1, got total={total}, size={size}")
    rng = np.random.default_rng(seed)
    drawn = rng.choice(range(total), size=min(size, total), replace=False)
    return sorted(int(i) for i in drawn)


def random_subset(items: Sequence[T], size: int, seed: int) -> list[T]:
    """The items at ``subset_indices(len(items), size, seed)``."""
    return [items[i] for i in subset_indices(len(items), size, seed)]
