"""Anytime-valid tests and confidence sequences: a run is judged every few seconds and polled
every minute, so a test may be read any number of times and still keep its error rate.

The statistic of every check is an estimate with a standard error that shrinks like 1/sqrt(n).
Its z-score is read against the Gaussian-mixture martingale (Robbins 1970; Howard et al. 2021,
"Time-uniform, nonparametric, nonasymptotic confidence sequences"; the same boundary as Lindon
et al. 2022 and `savvi`'s sequential t-test for large n): with a mixing variance tuned to be
tightest at `horizon` pairs, the mixture's value is an e-value whose running maximum crosses
1/alpha with probability at most alpha (Ville's inequality), however often it is looked at.
The standard errors are plug-in estimates, so the guarantee is asymptotic (Waudby-Smith et al.,
"Time-uniform central limit theory"); `min_samples` keeps small segments out.

Written here rather than taken from PyPI: `confseq` needs a Boost toolchain to build and has
not been released since 2023, `expectation` is not published in a usable version, and `savvi`
offers regression and multinomial tests but no test of a rate or ratio against a margin. The
boundary is a closed form; tests/test_sequential.py checks it against `savvi` and by simulation.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable


def mixing_scale(horizon: float, alpha: float) -> float:
    """rho^2 per pair: the mixture's boundary is tightest near `horizon` pairs (Howard et al.'s
    choice for a two-sided boundary at level alpha)."""
    two_log = 2 * math.log(1 / alpha)
    return (two_log + math.log1p(two_log)) / horizon


def log_e_one_sided(z: float, r: float) -> float:
    """log of the half-normal mixture of exp(lambda*S - lambda^2*V/2) over lambda >= 0, for a
    z-score `z` at information ratio r = rho^2 * n: an e-process for H0 "the true value is at or
    on the good side of the threshold" (every component is a supermartingale under it)."""
    if r <= 0:
        return 0.0
    k = r / (1 + r)
    return math.log(2) - 0.5 * math.log1p(r) + _log_ndtr_plus_half_square(z * math.sqrt(k))


def _log_ndtr_plus_half_square(x: float) -> float:
    """log Phi(x) + x^2/2, in pure Python: the judge asks for it twice per check and segment, and
    a scipy call's overhead is many times the arithmetic. Far in the left tail Phi(x) ~
    phi(x)/-x (Mills ratio), and the x^2/2 cancels exactly: summed apart, two terms as large as
    x^2 left rounding garbage (an estimate a hair from 0 with a standard error of 1e-18 reached
    z = -1e16 and read as "worse")."""
    if x > -20:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2))) + 0.5 * x * x
    return -math.log(-x) - 0.5 * math.log(2 * math.pi) + math.log1p(-1 / (x * x))


def log_e_two_sided(z: float, r: float) -> float:
    """log of the normal mixture over all lambda (the two-sided version)."""
    if r <= 0:
        return 0.0
    return -0.5 * math.log1p(r) + 0.5 * z * z * r / (1 + r)


def p_value(z: float, n: float, horizon: float, alpha: float) -> float:
    """Anytime-valid one-sided p-value for H0 "not worse than the threshold", where z > 0 points
    to worse: min(1, 1/E)."""
    if not math.isfinite(z):
        return 0.0 if z > 0 else 1.0
    log_e = log_e_one_sided(z, n * mixing_scale(horizon, alpha))
    return 1.0 if log_e <= 0 else math.exp(-log_e)


def z_bound_one_sided(n: float, horizon: float, alpha: float) -> float:
    """Standard errors from the estimate to the threshold at which the one-sided test (either
    side) rejects at alpha: the ends of the interval the decisions are read against. An upper
    end within the threshold is exactly "shown within"; a lower end past it, "shown worse"
    before the correction for many tests."""
    r = n * mixing_scale(horizon, alpha)
    if r <= 0:
        return math.inf
    target = math.log(1 / alpha)
    lo, hi = 0.0, 1.0
    while log_e_one_sided(hi, r) < target:
        lo, hi = hi, hi * 2
    for _ in range(60):  # the e-value grows with z: bisect to well below rounding of the shown bounds
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if log_e_one_sided(mid, r) < target else (lo, mid)
    return hi


def pairs_needed(
    gap: float,
    se: float,
    n: int,
    horizon: float,
    alpha: float,
    limit: int = 10**9,
    as_normal: Callable[[float], float] = lambda z: z,
) -> int | None:
    """How many pairs in all the one-sided test would need to reject, if the estimate stayed
    `gap` away from the threshold (on the side being shown) and its standard error `se` at `n`
    pairs shrank like 1/sqrt(n). `as_normal` reads the statistic as the test does (a t statistic
    of few stretches of time is read through its own tail). None when it never would (gap <= 0)
    or only past `limit`."""
    if gap <= 0 or se <= 0 or n <= 0:
        return None if gap <= 0 else n

    def rejects(m: float) -> bool:
        return p_value(as_normal(gap / (se * math.sqrt(n / m))), m, horizon, alpha) < alpha

    hi = float(n)
    while not rejects(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = hi / 2 if hi > n else float(n)
    while hi - lo > max(1.0, lo * 0.01):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if rejects(mid) else (mid, hi)
    return math.ceil(hi)


def _beta_prior(threshold: float, horizon: float, alpha: float) -> tuple[float, float]:
    """Beta(a, b) centred on the threshold, as spread as the Gaussian mixture's alternatives:
    variance threshold(1-threshold) * rho^2 per pair, so both are tightest near `horizon`."""
    m = max(1.0 / mixing_scale(horizon, alpha) - 1.0, 2.0)
    return threshold * m, (1.0 - threshold) * m


def log_e_rate(k: int, n: int, threshold: float, horizon: float, alpha: float, above: bool) -> float:
    """log of an exact e-process for a Bernoulli rate: k events in n, against H0 "the rate is at
    or below `threshold`" (`above`: the evidence that it is above) or "at or above" it.

    The mixture, over a Beta prior truncated to the alternative side, of the likelihood ratios
    prod (p/t)^x ((1-p)/(1-t))^(1-x): each is a martingale at p = t and a supermartingale on the
    null side, so the mixture is an e-process however small the rate and the counts are (no
    plug-in variance: a rate of 1 % seen 3 times out of 1,000 is not "known to 0.2 %"). The
    integral is a ratio of incomplete beta functions (Robbins' beta-binomial mixture)."""
    from scipy.special import betainc, betaincc, betaln

    if n <= 0:
        return 0.0
    t = min(max(threshold, 1e-12), 1 - 1e-12)
    a, b = _beta_prior(t, horizon, alpha)
    tail = betaincc if above else betainc  # the prior's mass on the alternative side
    prior_mass, posterior_mass = float(tail(a, b, t)), float(tail(a + k, b + n - k, t))
    if posterior_mass <= 0.0 or prior_mass <= 0.0:
        return -math.inf  # the data sit far on the null side
    return (
        float(betaln(a + k, b + n - k))
        - float(betaln(a, b))
        + math.log(posterior_mass)
        - math.log(prior_mass)
        - k * math.log(t)
        - (n - k) * math.log1p(-t)
    )


def p_value_rate(k: int, n: int, threshold: float, horizon: float, alpha: float, above: bool) -> float:
    """Anytime-valid p-value, min(1, 1/E), of the exact Bernoulli test (`log_e_rate`)."""
    log_e = log_e_rate(k, n, threshold, horizon, alpha, above)
    return 1.0 if log_e <= 0 else math.exp(-log_e)


def rate_bounds(k: int, n: int, horizon: float, alpha: float) -> tuple[float, float]:
    """The confidence sequence of a rate, read off the exact test: the rates neither one-sided
    test rejects at alpha (the interval an analyst reads the decision from). Each end is the
    root of the test's evidence less its bar, found by Brent's method to the last digits (a
    bisection took 50 steps an end, and a look judges hundreds of rates)."""
    from scipy.optimize import brentq

    target = math.log(1 / alpha)
    rate = k / n

    def excess(t: float, above: bool) -> float:
        return log_e_rate(k, n, t, horizon, alpha, above) - target

    def edge(above: bool) -> float:
        # above: the lowest rate the data do not show exceeded, between 0 and the observed rate;
        # else the highest not shown undercut, between it and 1
        far, near = (0.0, rate) if above else (1.0, rate)
        if far == near or excess(far, above) < 0:  # not even the farthest rate is rejected
            return far
        if excess(near, above) >= 0:
            return near
        lo, hi = sorted((far, near))
        return float(brentq(excess, lo, hi, args=(above,), xtol=1e-300, rtol=4 * sys.float_info.epsilon))

    return edge(True), edge(False)
