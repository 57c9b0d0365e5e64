"""The decision of every check in every segment: fail, pass or undecided, with false alarms
controlled across segments and checks however often the run is judged.

`policy.decision = "anytime"` (the default), per tested check:
- fail (NO_GO if critical) when the anytime-valid test shows the value worse than the threshold,
  after weighted Holm (or BH) over the family of critical tests, half of alpha to the whole
  run's tests and half to the segments';
- pass when the value is shown within the threshold (a non-inferiority test at alpha); no
  correction is needed for that side, because GO needs every critical check shown within
  (an intersection-union test);
- otherwise undecided, with the pairs the run would need at the current variance. A check
  with `require_proof = false` (and every warning) passes unless it fails.
`policy.decision = "fixed"`: the fixed-sample tests, read as if the run were judged once, and
a check passes unless it fails (the rule before the anytime tests; kept for comparison).
Distance checks (Wasserstein, Jensen-Shannon, PSI without a test) are effect-size rules in both.
"""

from __future__ import annotations

import math

from diff import checks as ck
from diff import sequential
from diff.segments import ALL
from diff.stats import adjust
from schemas.policy import Policy


def decide(results: list[ck.CheckResult], policy: Policy, n_all: int) -> list[ck.CheckResult]:
    """Set each result's status (and, for the anytime rule, its anytime p-values, confidence
    sequence and pairs needed); returns the critical family."""
    live = [r for r in results if r.status not in (ck.PENDING, ck.NA)]
    anytime = policy.decision == "anytime"
    if anytime:
        for r in live:
            _anytime_test(r, policy)
    family = _correct(live, policy)
    proof = {c.id: (c.require_proof if c.require_proof is not None else c.severity == "critical") for c in policy.checks}
    for r in live:
        bad = (r.p_adjusted is not None and r.p_adjusted < policy.alpha) if r.p_value is not None else bool(r.exceeded)
        if bad and not r.may_fail:
            bad = False
        if bad and r.sustained is False:
            bad = False
            r.detail += "; not sustained long enough"
        if bad:
            r.status = ck.FAIL if r.severity == "critical" else ck.WARN
        elif anytime and r.severity == "critical" and proof.get(r.check_id, True) and r.p_within is not None:
            r.status = ck.PASS if r.p_within < policy.alpha else ck.UNDECIDED
            if r.status == ck.UNDECIDED:
                _say_what_is_missing(r, policy, n_all)
        else:
            r.status = ck.PASS
    return family


def _anytime_test(r: ck.CheckResult, policy: Policy) -> None:
    z = r.z_worse()
    if z is None or r.se is None or r.est is None or r.n <= 0:
        return
    horizon, alpha = float(policy.anytime_horizon), policy.alpha
    r.p_value = sequential.p_value(z, r.n, horizon, alpha)
    r.p_within = sequential.p_value(-z, r.n, horizon, alpha)
    if r.kind == "abs_diff_quantile":
        return  # tested on the share beyond the threshold; its interval stays on the quantile
    # each end of the interval is the one-sided anytime bound at alpha, so that an analyst
    # reads the decision off it: GO needs the bad end within the threshold
    half = sequential.z_bound_one_sided(r.n, horizon, alpha) * r.se
    lo, hi = r.est - half, r.est + half
    if r.kind == "latency":  # tested on the log scale, shown as a ratio
        lo, hi = math.exp(lo), math.exp(hi)
    elif r.kind == "score_shift":  # tested on |mean|, shown around the signed mean
        sign = 1.0 if (r.value or 0.0) >= 0 else -1.0
        lo, hi = sorted((sign * lo, sign * hi))
    r.ci = (lo, hi)


def _say_what_is_missing(r: ck.CheckResult, policy: Policy, n_all: int) -> None:
    """An undecided check says how far it is from being shown within its threshold, and how
    many pairs of the run that would take at the current variance, if the estimate held. One on
    the wrong side says how many would show it worse instead (at its share of alpha among the
    tests corrected together, the strictest level Holm may hold it to)."""
    z = r.z_worse()
    assert z is not None
    assert r.se is not None
    # rounded inputs and a two-digit answer: a re-judge whose sums differ in the last bits
    # (DuckDB's parallel aggregation) must say the same
    gap, se = float(f"{-z * r.se:.6g}"), float(f"{r.se:.6g}")  # distance to the threshold on the good side
    horizon = float(policy.anytime_horizon)
    needed = sequential.pairs_needed(gap, se, r.n, horizon, policy.alpha)
    # the segment's pairs grow with the run's: say it in the run's pairs
    scale = n_all / r.n if r.segment != ALL and 0 < r.n < n_all else 1.0

    def in_the_run(pairs: int) -> int:
        return int(float(f"{pairs * scale:.2g}"))

    if needed is not None and r.n:
        r.pairs_needed = in_the_run(needed)
        more = f"about {r.pairs_needed:,} pairs in the run would show it at the current variance"
    else:
        more = "the estimate is on the wrong side of the threshold: more pairs may show it worse, never within"
        worse = sequential.pairs_needed(-gap, se, r.n, horizon, r.fail_level) if gap < 0 and r.fail_level and r.may_fail else None
        if worse is not None:
            more += f"; about {in_the_run(worse):,} pairs in the run would show it worse at the current variance"
    r.detail += f"; not yet shown within the threshold ({more})"


def _correct(results: list[ck.CheckResult], policy: Policy) -> list[ck.CheckResult]:
    """Multiple-testing control; returns the critical family. The tests that can make a NO_GO
    (critical) form one family, so the false NO_GO rate is controlled at alpha however many
    segments and checks there are; warnings form their own and take nothing from it. Within a
    family, half of alpha goes to the whole run's tests (segment `all`, where a regression of
    all traffic shows) and half to the segments' (weighted Holm / BH stay valid for any
    weights)."""
    families: dict[str, list[ck.CheckResult]] = {"critical": [], "warning": []}
    for r in results:
        if r.p_value is not None:
            families["critical" if r.severity == "critical" else "warning"].append(r)
    for family in families.values():
        n_all = sum(r.segment == ALL for r in family)
        n_seg = len(family) - n_all
        weights = [(0.5 / n_all if r.segment == ALL else 0.5 / n_seg) if n_all and n_seg else 1.0 for r in family]
        pvalues = [float(r.p_value) for r in family if r.p_value is not None]
        total = sum(weights)
        for r, p_adj, w in zip(family, adjust(pvalues, policy.correction, weights), weights, strict=True):
            r.p_adjusted = p_adj
            r.fail_level = policy.alpha * w / total
    return families["critical"]
