"""The figures the experiments share: one percentile for every p50 and p99 that proj reports."""

from __future__ import annotations

import math


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank percentile, ``p`` in 0..100 (a value that occurred); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
