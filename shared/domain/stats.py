"""The few statistics the canary analysis needs, on the standard library alone.

Written here rather than imported from SciPy/statsmodels because every probe of a bake
loads this module in a Cloud Function: those two bring ~60 MB of wheels and seconds of
import time to a cold start, for four formulas. Each formula names its textbook form;
the unit tests check them against worked examples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

_NORMAL = NormalDist()


def upper_tail(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 1.0 - _NORMAL.cdf(z)


def wilson_interval(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval for a proportion (two-sided at ``confidence``).

    Unlike the normal approximation it stays inside [0, 1] and is honest for small
    samples and for 0 or ``trials`` successes (Wilson 1927; Brown, Cai & DasGupta 2001).
    """
    if trials <= 0:
        return 0.0, 1.0
    z = _NORMAL.inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(x1: int, n1: int, x2: int, n2: int) -> float:
    """One-sided p of Fisher's exact test that the first proportion is higher than the second.

    Exact at every sample size (the two-proportion z-test calls 1 failure in 21 against 0 in
    223 "beyond chance", z = 3.3; the exact p is 21/244 = 0.086): the chance, with the totals
    fixed, that the first group holds at least ``x1`` of the ``x1 + x2`` events (hypergeometric tail).
    """
    if n1 <= 0 or n2 <= 0:
        return 1.0
    total, events = n1 + n2, x1 + x2
    denominator = _log_comb(total, n1)
    return min(1.0, sum(math.exp(_log_comb(events, k) + _log_comb(total - events, n1 - k) - denominator)
                        for k in range(x1, min(events, n1) + 1)))


@dataclass(frozen=True)
class RankTest:
    u: float  # Mann-Whitney U of the first sample
    z: float
    p_greater: float  # one-sided p that the first sample tends to be larger


def mann_whitney_greater(first: Sequence[float], second: Sequence[float]) -> RankTest:
    """Mann-Whitney U test, alternative "first is stochastically greater".

    Normal approximation with tie correction and continuity correction, as SciPy's
    ``mannwhitneyu(method="asymptotic")``; fine from about 20 values per side.
    """
    n1, n2 = len(first), len(second)
    if n1 == 0 or n2 == 0:
        return RankTest(0.0, 0.0, 1.0)
    pooled = sorted([(v, 0) for v in first] + [(v, 1) for v in second])
    ranks_first = 0.0
    tie_term = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        average_rank = (i + j) / 2 + 1
        ties = j - i + 1
        tie_term += ties ** 3 - ties
        ranks_first += average_rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        i = j + 1
    u = ranks_first - n1 * (n1 + 1) / 2
    n = n1 + n2
    mean = n1 * n2 / 2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return RankTest(u, 0.0, 0.5 if u == mean else (0.0 if u > mean else 1.0))
    z = (u - mean - 0.5) / math.sqrt(variance)
    return RankTest(u, z, upper_tail(z))


def percentile_from_buckets(bounds: Sequence[float], counts: Sequence[int], q: float) -> tuple[float, bool] | None:
    """The ``q`` quantile (0..1) of a bucketed distribution, interpolated inside its bucket.

    ``bounds`` are Cloud Monitoring's explicit bucket boundaries b0 < b1 < … < bN: bucket 0
    is the underflow (< b0), bucket i is [b(i-1), bi), bucket N+1 the overflow (>= bN).
    ``counts`` may be shorter than N+2 (trailing empty buckets omitted, as the API does).
    Returns (value, exact) where exact is False when the quantile falls in the overflow
    bucket (then the value is its lower bound: "at least"); None for an empty distribution.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(counts):
        if count and cumulative + count >= rank:
            if index > len(bounds) - 1:  # overflow: unbounded above
                return float(bounds[-1]), False
            lower = 0.0 if index == 0 else float(bounds[index - 1])
            upper = float(bounds[index])
            return lower + (upper - lower) * (rank - cumulative) / count, True
        cumulative += count
    return float(bounds[-1]), False
