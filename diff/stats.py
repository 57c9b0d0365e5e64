"""Small, explicit statistics: intervals, one-sided tests and multiple-testing control.

Every check reduces to a one-sided p-value for "the candidate is worse than the threshold",
so one correction (Holm or Benjamini-Hochberg) covers all segments × checks."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import norm


def wilson(k: float, n: float, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (sound at small n and near 0 or 1)."""
    if n <= 0:
        return (0.0, 1.0)
    z = float(norm.ppf(0.5 + conf / 2))
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def p_rate_above(k: float, n: float, threshold: float) -> float:
    """One-sided p-value for H0: rate <= threshold, from k events in n (score test)."""
    if n <= 0:
        return 1.0
    p0 = min(max(threshold, 1e-9), 1 - 1e-9)
    z = (k / n - p0) / math.sqrt(p0 * (1 - p0) / n)
    return float(norm.sf(z))


def p_diff_above(k1: float, n1: float, k2: float, n2: float, margin: float) -> float:
    """One-sided p-value for H0: p1 - p2 <= margin (two independent-enough proportions;
    Wald with a continuity-free unpooled variance, floored so empty counts stay sane)."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    p1, p2 = k1 / n1, k2 / n2
    var = max(p1 * (1 - p1), 0.25 / n1) / n1 + max(p2 * (1 - p2), 0.25 / n2) / n2
    z = (p1 - p2 - margin) / math.sqrt(var)
    return float(norm.sf(z))


def p_mean_beyond(mean: float, se: float, margin: float) -> float:
    """One-sided p-value for H0: |mean| <= margin."""
    if se <= 0 or not math.isfinite(se):
        return 0.0 if abs(mean) > margin else 1.0
    return float(norm.sf((abs(mean) - margin) / se))


def mean_ci(mean: float, se: float, conf: float = 0.95) -> tuple[float, float]:
    z = float(norm.ppf(0.5 + conf / 2))
    return (mean - z * se, mean + z * se)


def quantile_rank_bounds(p: float, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI for the p-quantile, as fractions (order statistics, normal approx)."""
    if n <= 0:
        return (0.0, 1.0)
    z = float(norm.ppf(0.5 + conf / 2))
    half = z * math.sqrt(p * (1 - p) / n)
    return (max(0.0, p - half), min(1.0, p + half))


def holm(pvalues: Sequence[float], weights: Sequence[float] | None = None) -> list[float]:
    """Holm step-down adjusted p-values (controls the family-wise error rate); with `weights`,
    the weighted Holm procedure: hypothesis i gets a share w_i of alpha. Weights summing to less
    than 1 are a declared family of which some tests did not run: their shares stay theirs (as
    if their p-values were 1), so a test's level does not grow as others come and go."""
    m = len(pvalues)
    w = _shares(weights, m)
    order = sorted(range(m), key=lambda i: pvalues[i] / w[i])
    adj = [1.0] * m
    running = 0.0
    remaining = max(1.0, sum(w))
    for i in order:
        running = max(running, min(1.0, pvalues[i] * remaining / w[i]))
        adj[i] = running
        remaining -= w[i]
    return adj


def benjamini_hochberg(pvalues: Sequence[float], weights: Sequence[float] | None = None) -> list[float]:
    """Weighted BH step-up adjusted p-values (Genovese, Roeder and Wasserman): p_i / w_i over
    rank, with shares w_i of alpha summing to at most 1 over the declared family. Fed with
    anytime p-values p = 1/E, this is e-BH (Wang and Ramdas 2022): the false discovery rate
    stays controlled under any dependence and at any stopping time."""
    m = len(pvalues)
    w = _shares(weights, m)
    scaled = [min(1.0, pvalues[i] / w[i]) if w[i] > 0 else 1.0 for i in range(m)]
    order = sorted(range(m), key=lambda i: scaled[i], reverse=True)
    adj = [1.0] * m
    running = 1.0
    for rank_from_top, i in enumerate(order):
        rank = m - rank_from_top
        running = min(running, scaled[i] / rank)
        adj[i] = min(1.0, running)
    return adj


def _shares(weights: Sequence[float] | None, m: int) -> list[float]:
    """Each test's share of alpha: equal without weights; weights summing to more than 1 are
    scaled down to 1, and a smaller sum is kept (the rest belongs to tests that did not run)."""
    if weights is None or m == 0:
        return [1.0 / max(m, 1)] * m
    total = float(sum(weights))
    scale = 1.0 / total if total > 1.0 else 1.0
    return [float(x) * scale for x in weights]


def adjust(pvalues: Sequence[float], method: str, weights: Sequence[float] | None = None) -> list[float]:
    return holm(pvalues, weights) if method == "holm" else benjamini_hochberg(pvalues, weights)
