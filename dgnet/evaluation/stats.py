"""Statistics over seeds: the mean and spread of a metric, and the paired 95% t interval of a difference.

Pure functions of plain numbers, so a study's table can be checked by hand (tests/test_study.py). The t quantile
comes from a table (df 1..30) and, beyond it, the Cornish-Fisher expansion of Student's t in the normal quantile
(Abramowitz & Stegun 26.7.5); scipy is not a dependency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30 (standard tables, 3 decimals).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = 1.959964  # the normal distribution's 0.975 quantile


def t975(df: int) -> float:
    """``t_{0.975}`` with ``df`` degrees of freedom: the table for df <= 30, else
    ``z + (z^3 + z) / (4 df) + (5 z^5 + 16 z^3 + 3 z) / (96 df^2)`` (A&S 26.7.5; within 0.001 of the exact value
    for df > 30)."""
    if df < 1:
        raise ValueError(f"t quantile: df={df}: expected at least 1 degree of freedom (two or more seeds)")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def summarize(values: Sequence[float]) -> dict:
    """``{n, mean, std, min, max, values}`` of ``values``; ``std`` is the sample standard deviation (n - 1),
    ``None`` for a single value."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("summarize: no values")
    n = len(v)
    mean = sum(v) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": std, "min": min(v), "max": max(v), "values": v}


def paired_interval(a: Sequence[float], b: Sequence[float]) -> dict:
    """The paired difference ``a - b`` (same seeds, in the same order): its mean, the per-seed differences and the
    95% t interval ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (``lo``/``hi`` ``None`` with fewer than two pairs)."""
    if len(a) != len(b):
        raise ValueError(f"paired_interval: {len(a)} and {len(b)} values; expected one pair per seed")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    s = summarize(d)
    lo = hi = half = None
    if s["n"] > 1:
        half = t975(s["n"] - 1) * s["std"] / math.sqrt(s["n"])
        lo, hi = s["mean"] - half, s["mean"] + half
    return {"n": s["n"], "mean": s["mean"], "std": s["std"], "half_width": half, "lo": lo, "hi": hi, "values": d}
