"""The decision of every check in every segment: fail, pass or undecided, with false alarms
controlled across segments, checks and candidates however often the run is judged.

`policy.decision = "anytime"` (the default), per tested check:
- fail (NO_GO if critical) when the anytime-valid test shows the value worse than the threshold,
  after weighted Holm (or e-BH) over the family of critical tests declared from the first look
  (`Family`): half of alpha to the whole run's tests, half to the segments' slots, split evenly
  over the run's candidates;
- pass when the value is shown within what it must be shown within: the threshold in `all`,
  the segment margin (`policy.segment_margin` times as far from the ideal) in a segment. No
  correction is needed for that side: GO needs every critical check of every segment but the
  rare ones shown within (an intersection-union test), so each is a test at alpha of its own;
- otherwise undecided, with the pairs the run would need at the current variance. A check
  with `require_proof = false` (and every warning) passes unless it fails.
`policy.decision = "fixed"`: the fixed-sample tests, read as if the run were judged once, and
a check passes unless it fails (the rule before the anytime tests; kept for comparison).
Distance checks (Wasserstein, Jensen-Shannon, PSI without a test) are effect-size rules in both.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shadowdiff.diff import checks as ck
from shadowdiff.diff import sequential
from shadowdiff.diff.segments import ALL
from shadowdiff.diff.stats import adjust
from shadowdiff.schemas.policy import Policy


@dataclass(frozen=True)
class Family:
    """The tests corrected together, declared before any data: which checks of which segments
    may be tested, so that each test's share of alpha is fixed from the first look (a share that
    grew or shrank as segments reached `min_samples` would void the error guarantee across looks).

    `slots`: per grouping set of segment fields ("carrier", "carrier&origin"), how many segments
    it may hold; `checks`: the check ids whose tests may count; `candidates`: how many candidates
    the run judges (each gets an equal part of alpha, so that a run of three has one error rate)."""

    slots: dict[str, int] = field(default_factory=dict)
    checks: frozenset[str] = frozenset()
    candidates: int = 1

    @classmethod
    def declared(cls, segment_sets: Iterable[Sequence[str]], policy: Policy, check_ids: Iterable[str], candidates: int) -> Family:
        # a field keeps at most max_segment_values values and only those with min_segment_share
        # of the traffic, the rest pooled into one '(other)'
        per_field = policy.max_segment_values
        if policy.min_segment_share > 0:
            per_field = min(per_field, math.floor(1 / policy.min_segment_share))
        slots = {"&".join(s): per_field + 1 for s in segment_sets if s}
        return cls(slots, frozenset(check_ids), max(1, candidates))

    def weights(self, tests: Sequence[ck.CheckResult]) -> list[float]:
        """Each test's share of alpha. A grouping set or check that holds more tests than declared
        (a combination of fields with many values) splits its share among them: shares only
        shrink, and they never sum to more than 1."""
        present_sets = {_grouping_set(r.segment) for r in tests} - {""}
        sets = set(self.slots) | present_sets
        checks = self.checks | {r.check_id for r in tests}
        per_segment = Counter((r.check_id, r.segment) for r in tests)  # several features' tests
        segments_in = {g: len({r.segment for r in tests if _grouping_set(r.segment) == g}) for g in present_sets}
        out = []
        for r in tests:
            g = _grouping_set(r.segment)
            whole_run = 0.5 if sets else 1.0
            share = whole_run if g == "" else 0.5 / len(sets) / max(self.slots.get(g, 0), segments_in[g])
            out.append(share / len(checks) / self.candidates / per_segment[(r.check_id, r.segment)])
        return out


def _grouping_set(segment: str) -> str:
    """The fields a segment's name groups by: `carrier=VX&origin=SFO` → `carrier&origin`."""
    if segment == ALL:
        return ""
    return "&".join(part.split("=", 1)[0] for part in segment.split("&"))


def within_threshold(r: ck.CheckResult, policy: Policy) -> float | None:
    """What a result must be shown within, on its test's scale: the threshold in `all`; in a
    segment, `segment_margin` times as far from the ideal (a ratio's log, an overlap's shortfall
    from 1, a rate, a share, a mean)."""
    t = r.test_threshold
    if t is None or r.segment == ALL or not r.segment_margin:
        return t
    margin = 1.0 if policy.prove_in_segments else policy.segment_margin
    return 1 - (1 - t) * margin if r.lower_is_worse else t * margin


def decide(results: list[ck.CheckResult], policy: Policy, n_all: int, family: Family | None = None) -> list[ck.CheckResult]:
    """Set each result's status (and, for the anytime rule, its anytime p-values, confidence
    sequence and pairs needed); returns the critical family. Without a declared `family`, the
    one of the results' own segments and checks."""
    live = [r for r in results if r.status not in (ck.PENDING, ck.NA)]
    anytime = policy.decision == "anytime"
    for r in live:
        r.within_threshold = within_threshold(r, policy)
        _wait_for_span(r, policy)
        if r.waiting is not None:
            r.p_value = None  # neither side is tested yet
        elif anytime:
            _anytime_test(r, policy)
    family_tests = _correct(live, policy, family or Family())
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
        elif r.waiting is not None and r.severity == "critical" and proof.get(r.check_id, True):
            r.status = ck.UNDECIDED
            r.detail += f"; not yet tested: {r.waiting}"
        elif anytime and r.severity == "critical" and proof.get(r.check_id, True) and r.p_within is not None:
            r.status = ck.PASS if r.p_within < policy.alpha else ck.UNDECIDED
            if r.status == ck.UNDECIDED:
                _say_what_is_missing(r, policy, n_all)
        else:
            r.status = ck.PASS
    return family_tests


def _wait_for_span(r: ck.CheckResult, policy: Policy) -> None:
    if r.kind == "latency" and r.waiting is None and r.span_s is not None:
        need = policy.latency_min_span_minutes * 60
        if r.span_s < need:
            r.waiting = f"the calls span {r.span_s:.0f} s of wall-clock time, latency is tested from {need:.0f} s"


def _as_normal(z: float, df: float | None) -> float:
    """A t statistic read as the standard normal one with the same tail probability: the
    mixture boundary sits at z of 3-5, where the t tail of few stretches is many times heavier
    than the normal one (matching them at the 97.5 % point only understated it)."""
    if df is None or not math.isfinite(z):
        return z
    from scipy.stats import norm
    from scipy.stats import t as t_dist

    tail = float(t_dist.logsf(abs(z), df))
    return math.copysign(float(-norm.ppf(math.exp(tail))) if tail > -700 else abs(z), z)


def _anytime_test(r: ck.CheckResult, policy: Policy) -> None:
    z = r.z_worse()
    if z is None or r.se is None or r.est is None or r.n <= 0 or r.test_threshold is None:
        return
    horizon, alpha = float(policy.anytime_horizon), policy.alpha
    within = r.within_threshold if r.within_threshold is not None else r.test_threshold
    if r.counts is not None:
        # a rate: the exact Bernoulli e-process, whatever the counts
        k, n = r.counts
        r.p_value = sequential.p_value_rate(k, n, r.test_threshold, horizon, alpha, above=True)
        r.p_within = sequential.p_value_rate(k, n, within, horizon, alpha, above=False)
        if r.kind != "abs_diff_quantile":
            r.ci = sequential.rate_bounds(k, n, horizon, alpha)
        return
    z_within = r.z_within()
    if r.noise_counts is not None:
        # an excess over the noise floor: each side's standard error at its own boundary
        k, n, kr, nr = r.noise_counts
        z = r.z_against(r.test_threshold, ck.excess_se(k, n, kr, nr, r.test_threshold)) or 0.0
        z_within = -(r.z_against(within, ck.excess_se(k, n, kr, nr, within)) or 0.0)
    assert z_within is not None
    r.p_value = sequential.p_value(_as_normal(z, r.df), r.n, horizon, alpha)
    r.p_within = sequential.p_value(_as_normal(z_within, r.df), r.n, horizon, alpha)
    if r.kind == "abs_diff_quantile":
        return  # tested on the share beyond the threshold; its interval stays on the quantile
    # each end of the interval is the one-sided anytime bound at alpha, so that an analyst
    # reads the decision off it: GO needs the bad end within the threshold
    half = _as_t(sequential.z_bound_one_sided(r.n, horizon, alpha), r.df) * r.se
    lo, hi = r.est - half, r.est + half
    if r.kind == "latency":  # tested on the log scale, shown as a ratio
        lo, hi = math.exp(lo), math.exp(hi)
    elif r.kind == "score_shift":  # tested on |mean|, shown around the signed mean
        sign = 1.0 if (r.value or 0.0) >= 0 else -1.0
        lo, hi = sorted((sign * lo, sign * hi))
    r.ci = (lo, hi)


def _as_t(z: float, df: float | None) -> float:
    """The t statistic with the tail probability of normal `z` (the inverse of `_as_normal`)."""
    if df is None or not math.isfinite(z):
        return z
    from scipy.stats import norm
    from scipy.stats import t as t_dist

    return float(t_dist.isf(norm.sf(z), df))


def _say_what_is_missing(r: ck.CheckResult, policy: Policy, n_all: int) -> None:
    """An undecided check says how far it is from being shown within its threshold, and how
    many pairs of the run that would take at the current variance, if the estimate held. One on
    the wrong side says how many would show it worse instead (at its share of alpha among the
    tests corrected together, the strictest level Holm may hold it to)."""
    z = r.z_within()
    assert z is not None
    assert r.se is not None
    # rounded inputs and a two-digit answer: a re-judge whose sums differ in the last bits
    # (DuckDB's parallel aggregation) must say the same
    gap, se = float(f"{z * r.se:.6g}"), float(f"{r.se:.6g}")  # distance to what it must be shown within
    horizon = float(policy.anytime_horizon)

    def as_normal(z: float) -> float:
        return _as_normal(z, r.df)

    needed = sequential.pairs_needed(gap, se, r.n, horizon, policy.alpha, as_normal=as_normal)
    if r.unit != "pairs":
        # outcomes arrive at their own pace: say how many this segment needs, in outcomes
        r.extra[f"{r.unit}_needed"] = needed
        where = "the run" if r.segment == ALL else "this segment"
        more = (
            f"about {needed:,} {r.unit} in {where} would show it at the current variance"
            if needed is not None
            else "the estimate is on the wrong side of the threshold: more may show it worse, never within"
        )
        r.detail += f"; not yet shown within the threshold ({more})"
        return
    # a segment's pairs (or latency's calls) grow with the run's pairs: say it in those
    scale = n_all / r.n if 0 < r.n < n_all else 1.0

    def in_the_run(pairs: int) -> int:
        return int(float(f"{pairs * scale:.2g}"))

    if needed is not None and r.n:
        r.pairs_needed = in_the_run(needed)
        more = f"about {r.pairs_needed:,} {r.noun} in the run would show it at the current variance"
    else:
        more = f"the estimate is on the wrong side of the threshold: more {r.noun} may show it worse, never within"
        worse = (
            sequential.pairs_needed(-gap, se, r.n, horizon, r.fail_level, as_normal=as_normal)
            if gap < 0 and r.fail_level and r.may_fail
            else None
        )
        if worse is not None:
            more += f"; about {in_the_run(worse):,} {r.noun} in the run would show it worse at the current variance"
    what = "the threshold" if r.segment == ALL else "the segment margin"
    r.detail += f"; not yet shown within {what} ({more})"


def _correct(results: list[ck.CheckResult], policy: Policy, family: Family) -> list[ck.CheckResult]:
    """Multiple-testing control; returns the critical family. The tests that can make a NO_GO
    (critical) form one family, so the false NO_GO rate is controlled at alpha however many
    segments, checks and candidates there are; warnings form their own and take nothing from
    it. Each test's share of alpha is fixed by the declared family (`Family.weights`); tests
    declared but not (yet) run keep theirs, as p-values of 1 would (weighted Holm and e-BH stay
    valid for any fixed weights, and for anytime p-values read at a stopping time)."""
    families: dict[str, list[ck.CheckResult]] = {"critical": [], "warning": []}
    for r in results:
        if r.p_value is not None:
            families["critical" if r.severity == "critical" else "warning"].append(r)
    for tests in families.values():
        weights = family.weights(tests)
        pvalues = [float(r.p_value) for r in tests if r.p_value is not None]
        for r, p_adj, w in zip(tests, adjust(pvalues, policy.correction, weights), weights, strict=True):
            r.p_adjusted = p_adj
            r.fail_level = policy.alpha * w
    return families["critical"]
