"""Summary statistics of timing samples (standard library only)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, "inclusive")."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """median, p95, min, max, mean, stdev and n of ``values``."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def paired_ratio(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, float]:
    """a/b per iteration (both measured in the same iteration), then summarised; plus the
    ratio of the medians. Iterations where either failed (None) are left out."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not pairs:
        return {"n": 0}
    ratios = [x / y for x, y in pairs]
    med_a = statistics.median(x for x, _ in pairs)
    med_b = statistics.median(y for _, y in pairs)
    return {
        "n": len(pairs),
        "of_medians": med_a / med_b,
        "paired_median": statistics.median(ratios),
        "paired_p5": percentile(ratios, 5),
        "paired_p95": percentile(ratios, 95),
    }
