"""One definition of a percentile for every figure the project prints (audit summary, benchmarks)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..100: the smallest value with at least ``q``% of the
    values at or below it. Always one of the values (no interpolation), so p50 of two latencies is
    the lower one, and a p99 of 20 samples is honest about being the maximum."""
    if len(values) == 0:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in 0..100, not {q}")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return float(ordered[k])
