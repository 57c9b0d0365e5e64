"""Turn per-segment aggregates into check results: a value, an interval, and a one-sided
p-value for "worse than the threshold" (or a distance compared with a threshold)."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

from scipy.stats import norm
from scipy.stats import t as t_dist

from shadowdiff.diff import stats
from shadowdiff.diff.aggregate import PairStats, interp
from shadowdiff.diff.drift import categorical_drift, psi_from_hist, wasserstein_from_hist
from shadowdiff.schemas.policy import Check

PASS, FAIL, WARN, PENDING, NA = "pass", "fail", "warn", "pending", "n/a"
UNDECIDED = "undecided"  # enough pairs to judge, but neither shown worse nor shown within


@dataclass
class CheckResult:
    check_id: str
    kind: str
    segment: str
    severity: str
    threshold: float
    n: int
    value: float | None = None
    ci: tuple[float, float] | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    exceeded: bool | None = None  # distance checks: decided without a test
    sustained: bool | None = None  # sustained-window checks: did it last long enough
    status: str = PASS
    feature: str | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # the test, on its own scale (log for ratios): estimate, standard error and threshold;
    # `lower_is_worse` for checks that fail below their threshold (overlap)
    est: float | None = None
    se: float | None = None
    test_threshold: float | None = None
    lower_is_worse: bool = False
    may_fail: bool = True  # False when a further condition of the kind rules a failure out
    p_within: float | None = None  # anytime p-value for "not within the threshold"
    pairs_needed: int | None = None  # undecided: pairs in all at which it would be decided
    fail_level: float | None = None  # the level its test gets of alpha when many are corrected (Bonferroni's share)
    # a rate tested exactly (diff/sequential.py's Bernoulli e-process): (events, trials)
    counts: tuple[int, int] | None = None
    # an excess over a noise floor: (events, trials, noise events, noise trials), whose standard
    # error is taken at the threshold being tested (`excess_se`), not at the observed rates
    noise_counts: tuple[int, int, int, int] | None = None
    # on the test's scale, what "shown within" is read against: the threshold itself in `all`,
    # the looser segment margin in a segment (set by diff/decide.py)
    within_threshold: float | None = None
    df: float | None = None  # a t statistic's degrees of freedom: z is read through the t distribution
    span_s: float | None = None  # latency: the wall-clock time its calls cover
    waiting: str | None = None  # why it cannot be decided either way yet (too few calls to test)
    # what its n counts: "pairs", or "outcomes" (pairs whose outcome arrived: they grow at their
    # own pace, so what is missing is said in outcomes of the segment, not pairs of the run)
    unit: str = "pairs"
    # what the run's count is said in when a check says how many more it needs: the shadow's
    # pairs, a canary's records ("canary records")
    noun: str = "pairs"
    # whether a segment is shown within the looser segment margin (diff/decide.py); outcome
    # checks hold every segment to the run's margin: a loss of accuracy confined to a segment
    # is the regression they exist to catch
    segment_margin: bool = True

    def set_test(self, est: float, se: float, threshold: float, lower_is_worse: bool = False) -> None:
        self.est, self.se, self.test_threshold, self.lower_is_worse = est, se, threshold, lower_is_worse

    def z_worse(self) -> float | None:
        """Standard errors by which the estimate is on the bad side of the threshold."""
        return self.z_against(self.test_threshold, self.se)

    def z_within(self) -> float | None:
        """Standard errors by which the estimate is on the good side of what it must be shown
        within (negative: on the bad side)."""
        z = self.z_against(self.within_threshold if self.within_threshold is not None else self.test_threshold, self.se)
        return None if z is None else -z

    def z_against(self, threshold: float | None, se: float | None) -> float | None:
        if self.est is None or se is None or threshold is None:
            return None
        gap = (threshold - self.est) if self.lower_is_worse else (self.est - threshold)
        if se <= 0:
            return math.inf if gap > 0 else (-math.inf if gap < 0 else 0.0)
        return gap / se

    def as_dict(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else round(float(x), 6)

        return {
            "check": self.check_id,
            "kind": self.kind,
            "segment": self.segment,
            "feature": self.feature,
            "status": self.status,
            "severity": self.severity,
            "value": r(self.value),
            "ci": None if self.ci is None else [r(self.ci[0]), r(self.ci[1])],
            "threshold": self.threshold,
            "p_value": r(self.p_value),
            "p_adjusted": r(self.p_adjusted),
            "n": self.n,
            "sustained": self.sustained,
            "p_within": r(self.p_within),
            "pairs_needed": self.pairs_needed,
            "detail": self.detail,
            "extra": self.extra,
        }


def rate_variance(k: float, n: float) -> float:
    """Variance of a rate k/n, from (k + 0.5)/(n + 1) so that 0 of n still has a spread (a rate
    never seen is not known to be exactly zero)."""
    p = (k + 0.5) / (n + 1)
    return p * (1 - p) / n


def excess_se(k: int, n: int, kr: int, nr: int, thr: float) -> float:
    """Standard error of the excess k/n - kr/nr for a test against `thr`: the candidate's rate
    taken at least at noise + thr, the rate on the boundary of both hypotheses. The observed
    rate's own variance is smallest exactly when few events were seen, which made a rate at its
    margin look shown within (or worse) far more often than alpha."""
    p_r = (kr + 0.5) / (nr + 1)
    p_c = max((k + 0.5) / (n + 1), min(p_r + thr, 1 - 1e-9))
    return math.sqrt(p_c * (1 - p_c) / n + p_r * (1 - p_r) / nr)


def against_noise(res: CheckResult, k: int, n: int, kr: int, nr: int, thr: float) -> None:
    """Candidate rate k/n vs the noise floor kr/nr: the excess, its interval (a conservative
    difference of Wilson bounds) and the one-sided p-value for "excess > thr"."""
    lo, hi = stats.wilson(k, n)
    rlo, rhi = stats.wilson(kr, nr)
    res.value = k / n - kr / nr
    res.ci = (lo - rhi, hi - rlo)
    res.p_value = stats.p_diff_above(k, n, kr, nr, thr)
    res.set_test(res.value, excess_se(k, n, kr, nr, thr), thr)
    res.noise_counts = (k, n, kr, nr)


def against_threshold(res: CheckResult, k: int, n: int, thr: float) -> None:
    res.value = k / n
    res.ci = stats.wilson(k, n)
    res.p_value = stats.p_rate_above(k, n, thr)
    res.set_test(res.value, math.sqrt(rate_variance(k, n)), thr)
    res.counts = (k, n)


def label_flip(chk: Check, seg: str, s: PairStats, thr: float, sev: str) -> CheckResult | None:
    n, k = int(s["n_lab"]), int(s["flips"])
    if n == 0:
        return None
    rate = k / n
    res = CheckResult(chk.id, chk.kind, seg, sev, thr, n)
    if int(s["n_lab_r"]) > 0:
        nr, kr = int(s["n_lab_r"]), int(s["flips_r"])
        against_noise(res, k, n, kr, nr, thr)
        res.detail = f"flip rate {rate:.2%} vs noise floor {kr / nr:.2%} (excess, threshold +{thr:.2%})"
        res.extra = {"flip_rate": rate, "noise_flip_rate": kr / nr, "n_noise": nr}
    else:
        against_threshold(res, k, n, thr)
        res.detail = f"flip rate {rate:.2%} (threshold {thr:.2%}; no noise floor measured)"
        res.extra = {"flip_rate": rate}
    return res


def score_diff(chk: Check, seg: str, s: PairStats, thr: float, sev: str) -> CheckResult | None:
    n, k = int(s["n_s"]), int(s["far"])
    if n == 0:
        return None
    share = k / n
    res = CheckResult(chk.id, chk.kind, seg, sev, thr, n)
    q: list[float | None] = [None, None, None] if s["abs_d_q"] is None else list(s["abs_d_q"])
    res.extra = {
        "share_beyond_tolerance": share,
        "tolerance": chk.tolerance,
        "abs_diff_p50": q[0],
        "abs_diff_p90": q[1],
        "abs_diff_p99": q[2],
        "correlation": s.get("corr"),
        "mean_relative_diff": s.get("mean_rel_d"),
    }
    if int(s["n_s_r"]) > 0:
        nr, kr = int(s["n_s_r"]), int(s["far_r"])
        against_noise(res, k, n, kr, nr, thr)
        res.extra["noise_share_beyond_tolerance"] = kr / nr
        res.detail = f"{share:.2%} of pairs differ by > {chk.tolerance} vs noise {kr / nr:.2%} (threshold +{thr:.2%})"
    else:
        against_threshold(res, k, n, thr)
        res.detail = f"{share:.2%} of pairs differ by > {chk.tolerance} (threshold {thr:.2%})"
    return res


def score_shift(chk: Check, seg: str, s: PairStats, thr: float, sev: str) -> CheckResult | None:
    n = int(s["n_s"])
    if n < 2:
        return None
    mean = s["sum_d"] / n
    var = max(s["sum_d2"] / n - mean * mean, 0.0) * n / (n - 1)
    se = math.sqrt(var / n)
    res = CheckResult(chk.id, chk.kind, seg, sev, thr, n, value=mean, ci=stats.mean_ci(mean, se))
    res.p_value = stats.p_mean_beyond(mean, se, thr)
    res.set_test(abs(mean), se, thr)
    res.detail = f"mean candidate-baseline score difference {mean:+.4f} (threshold ±{thr})"
    return res


def abs_score_diff(chk: Check, seg: str, s: PairStats, thr: float, sev: str) -> CheckResult | None:
    """Mean |Δscore| ≤ threshold: unlike the signed mean, opposite errors do not cancel."""
    n = int(s["n_s"])
    if n < 2:
        return None
    mean, se = _mean_test(s["sum_abs_d"], s["sum_d2"], n)
    res = CheckResult(chk.id, chk.kind, seg, sev, thr, n, value=mean, ci=stats.mean_ci(mean, se))
    res.p_value = float(norm.sf((mean - thr) / se)) if se > 0 else (0.0 if mean > thr else 1.0)
    res.set_test(mean, se, thr)
    res.detail = f"mean |candidate-baseline score difference| {mean:.4f} (threshold {thr})"
    return res


def abs_diff_quantile(
    chk: Check, seg: str, s: PairStats, thr: float, sev: str, grid: list[float], far: int
) -> CheckResult | None:
    """The `quantile` of |Δscore| ≤ threshold. The q-quantile exceeds thr exactly when more than
    1-q of the pairs differ by more than thr, so the test is the binomial one on that share
    (distribution-free); the value and interval are the empirical quantile and its order-statistic
    bounds."""
    n = int(s["n_s"])
    if n == 0 or not s.get("abs_d_grid"):
        return None
    q = chk.quantile
    lo_f, hi_f = stats.quantile_rank_bounds(q, n)
    vals = s["abs_d_grid"]
    value = interp(grid, vals, q)
    res = CheckResult(chk.id, chk.kind, seg, sev, thr, n, value=value, ci=(interp(grid, vals, lo_f), interp(grid, vals, hi_f)))
    res.p_value = stats.p_rate_above(far, n, 1 - q)
    res.set_test(far / n, math.sqrt(rate_variance(far, n)), 1 - q)
    res.counts = (far, n)
    res.extra = {"share_beyond_threshold": far / n, "allowed_share": 1 - q}
    res.detail = (
        f"p{q * 100:g} of |candidate-baseline score difference| {value:.4f} (threshold {thr}; {far / n:.2%} of pairs beyond it)"
    )
    return res


def _latency_quantile(s: PairStats, grid: list[float], side: Literal["b", "c"], p: float) -> tuple[float, float, float]:
    n, vals = (s["n_bl"], s["b_lat_q"]) if side == "b" else (s["n_cl"], s["c_lat_q"])
    lo_f, hi_f = stats.quantile_rank_bounds(p, n)
    return interp(grid, vals, p), interp(grid, vals, lo_f), interp(grid, vals, hi_f)


def latency(
    chk: Check,
    seg: str,
    s: PairStats,
    thr: float,
    sev: str,
    grid: list[float],
    windows: list[dict[str, Any]] | None,
    blocks: list[dict[str, Any]] | None = None,
    block_qi: int = 0,
) -> CheckResult | None:
    nb, nc = int(s["n_bl"]), int(s["n_cl"])
    if nb == 0 or nc == 0:
        if int(s["n_pair"]) == 0 or seg != "all":
            return None  # no answered pairs at all, or said once for the run
        # answered pairs without a latency on one side: a latency check cannot be assessed
        # (a missing measurement is never a pass)
        side = "baseline" if nb == 0 else "candidate"
        res = CheckResult(chk.id, chk.kind, seg, sev, thr, int(s["n_pair"]), status=NA)
        res.detail = f"no {side} latencies recorded for {int(s['n_pair'])} answered pairs" + (
            " (a live baseline needs envelope.live_latency_ms)" if side == "baseline" else ""
        )
        return res
    p = chk.quantile
    qb = _latency_quantile(s, grid, "b", p)[0]
    qc = _latency_quantile(s, grid, "c", p)[0]
    if not (qb > 0 and qc > 0):
        return None
    pooled = qc / qb
    groups, calls, span_s = _time_groups(blocks, block_qi)
    ratio = pooled
    res = CheckResult(chk.id, chk.kind, seg, sev, thr, calls or min(nb, nc), value=pooled)
    if len(groups) >= MIN_GROUPS:
        # calls close in time share the machine's load, and the rows of a batched call share
        # one latency: the ratio is judged per stretch of wall-clock time, and the stretches'
        # spread gives the interval (batch means, read through Student's t)
        log_ratio = statistics.fmean(groups)
        se, rho, df = batch_means_error(groups)
        ratio = math.exp(log_ratio)
        crit = float(t_dist.ppf(0.975, df))
        res.value, res.ci = ratio, (math.exp(log_ratio - crit * se), math.exp(log_ratio + crit * se))
        # a failure needs the observed quantile ratio itself past the threshold too: with few
        # calls per stretch the stretches' typical ratio can drift from the tail ratio asked about
        res.p_value = float(t_dist.sf((log_ratio - math.log(thr)) / se, df)) if ratio > 1 and pooled > thr else 1.0
        res.set_test(log_ratio, se, math.log(thr))
        res.df = df
        method = f"mean over {len(groups)} stretches of wall-clock time, {calls} calls (batch means, lag-1 correlation {rho:.2f})"
    else:
        # the rows of one call are one measurement: a few calls say little, however many rows
        res.waiting = (
            f"{calls} calls in {len(groups)} stretches of time; latency is tested from {MIN_GROUPS} stretches "
            f"of {MIN_CALLS_PER_GROUP} calls"
        )
        method = "pooled quantiles, not yet tested"
    res.span_s = span_s
    res.may_fail = pooled > thr
    qs = [0.5, 0.95, 0.99]
    res.extra = {
        "baseline_ms": {f"p{int(q * 100)}": interp(grid, s["b_lat_q"], q) for q in qs},
        "candidate_ms": {f"p{int(q * 100)}": interp(grid, s["c_lat_q"], q) for q in qs},
        "pooled_ratio": pooled,
        "blocks": len(groups),
        "calls": calls,
        "span_s": round(span_s, 1),
        "estimate": method,
    }
    res.sustained, window_info = _sustained(windows, chk, _window_ratio, thr)
    res.extra.update(window_info)
    res.detail = (
        f"p{p * 100:g} {qc:.1f} ms vs {qb:.1f} ms; ratio ×{ratio:.2f}, {method} (threshold ×{thr}, for {chk.for_minutes:g} min)"
    )
    return res


def batch_means_error(block_values: list[float]) -> tuple[float, float, float]:
    """(standard error, lag-1 correlation, degrees of freedom) of the mean of values taken in
    consecutive time blocks. Neighbouring blocks share a burst that outlasts them: their means are
    correlated, and the plain batch-means error would be too small. The AR(1) factor
    (1+rho)/(1-rho) on the variance (rho: the blocks' lag-1 autocorrelation) widens it to what
    the correlation allows. The degrees of freedom stay those of the blocks: cutting them by the
    same factor as well, read at the anytime boundary's far tail, left a segment's latency
    undecidable, and the A/A runs with bursts stay within alpha without it."""
    rho = min(max(_lag1_autocorrelation(block_values), 0.0), 0.95)
    inflation = (1 + rho) / (1 - rho)
    se = statistics.stdev(block_values) * math.sqrt(inflation / len(block_values)) or 1e-9
    return se, rho, max(2.0, len(block_values) - 1)


def _lag1_autocorrelation(xs: list[float]) -> float:
    mean = statistics.fmean(xs)
    dev = [x - mean for x in xs]
    den = sum(d * d for d in dev)
    return sum(a * b for a, b in itertools.pairwise(dev)) / den if den > 0 else 0.0


MIN_GROUPS = 8  # stretches of time: fewer say too little about the spread from one to the next
# at most: a fixed count whose stretches grow with the run outlast longer bursts (at 20, a
# burst of a minute early in a run read as signal)
MAX_GROUPS = 10
MIN_CALLS_PER_GROUP = 10


def _block_time(m: dict[str, Any]) -> float:
    first = m.get("first_call") or {}
    t = first.get("k0") if isinstance(first, dict) else None
    return t.timestamp() if t is not None else float(m.get("blk", 0))


def _stretch(t: float, t0: float, span: float, count: int, i: int, total: int) -> int:
    """Which of `count` equal stretches of time a block starting at `t` falls in (by position
    when all calls carry one time)."""
    if span > 0:
        return min(count - 1, math.floor((t - t0) / span * count))
    return i * count // total


def _time_groups(blocks: list[dict[str, Any]] | None, qi: int) -> tuple[list[float], int, float]:
    """(log quantile ratio per stretch of wall-clock time, calls, seconds the calls span). The
    blocks (runs of pairs in call order) are gathered into at most MAX_GROUPS stretches of equal
    time, each of at least MIN_CALLS_PER_GROUP calls (a short one joins the next); a stretch's
    value is its blocks' log ratio, weighted by their pairs."""
    usable = []
    for m in blocks or []:
        b, c = (m["b_q"][qi], m["c_q"][qi]) if m["b_q"] and m["c_q"] else (None, None)
        if b is not None and c is not None and b > 0 and c > 0:
            usable.append((_block_time(m), int(m["n"]), int(m.get("calls") or m["n"]), math.log(c / b)))
    if not usable:
        return [], 0, 0.0
    calls = sum(u[2] for u in usable)
    t0, t1 = usable[0][0], usable[-1][0]
    span = max(t1 - t0, 0.0)
    count = min(MAX_GROUPS, calls // MIN_CALLS_PER_GROUP, len(usable))
    if count < 1:
        return [], calls, span
    groups: list[float] = []
    acc_n = acc_calls = 0
    acc_sum = 0.0
    for i, (t, n, k, lr) in enumerate(usable):
        acc_n, acc_calls, acc_sum = acc_n + n, acc_calls + k, acc_sum + n * lr
        stretch = _stretch(t, t0, span, count, i, len(usable))
        ends = i + 1 == len(usable) or _stretch(usable[i + 1][0], t0, span, count, i + 1, len(usable)) != stretch
        if ends and acc_calls >= MIN_CALLS_PER_GROUP:
            groups.append(acc_sum / acc_n)
            acc_n = acc_calls = 0
            acc_sum = 0.0
    if acc_n and groups:  # a short last stretch joins the one before
        groups[-1] = (groups[-1] + acc_sum / acc_n) / 2
    return groups, calls, span


MIN_PER_WINDOW = 20


def _window_ratio(m: dict[str, Any]) -> float | None:
    if m["n"] < MIN_PER_WINDOW or not m["b_q"] or not m["c_q"] or "_qi" not in m:
        return None  # too few calls in this window to say anything
    b, c = m["b_q"][m["_qi"]], m["c_q"][m["_qi"]]
    if b is None or c is None or b <= 0:
        return None
    return float(c / b)


def _sustained(windows: list[dict[str, Any]] | None, chk: Check, metric: Any, thr: float) -> tuple[bool | None, dict[str, int]]:
    """Did the metric exceed the threshold over at least one whole window of `for_minutes`
    (tumbling, event time)? The whole-run test already controls false alarms; this asks that
    the excess held for the runbook's duration rather than being spread thin. A run shorter
    than one window is judged as one window."""
    if chk.for_minutes <= 0 or not windows:
        return None, {}
    above = evaluable = 0
    for m in windows:
        v = metric(m)
        if v is not None:
            evaluable += 1
            above += v > thr
    span = (windows[-1]["window_start"] - windows[0]["window_start"]).total_seconds() / 60
    info = {"windows_above": above, "windows_evaluable": evaluable, "window_minutes": int(chk.for_minutes)}
    if span < chk.for_minutes or evaluable == 0:
        return True, info
    return above >= 1, info


def error_rate(
    chk: Check, seg: str, s: PairStats, thr: float, sev: str, windows: list[dict[str, Any]] | None
) -> CheckResult | None:
    # calls the candidate refused as too many are the shadow's load (shadow_load), not its errors
    throttled = int(s["c_throttled_n"])
    n, k = int(s["n_req"]) - throttled, int(s["c_err_n"])
    if n == 0:
        return None  # every call refused: nothing says how often the candidate itself fails
    rate = k / n
    res = CheckResult(chk.id, chk.kind, seg, sev, thr, n, value=rate, ci=stats.wilson(k, n))
    res.p_value = stats.p_rate_above(k, n, thr)
    res.set_test(rate, math.sqrt(rate_variance(k, n)), thr)
    res.counts = (k, n)
    res.sustained, window_info = _sustained(
        windows, chk, lambda m: (m["c_err_n"] / m["n_called"]) if m["n_called"] >= MIN_PER_WINDOW else None, thr
    )
    res.extra = {
        "timeouts": int(s["c_timeout_n"]),
        "errors": k,
        "baseline_errors": int(s["b_err_n"]),
        "throttled": throttled,
        "timeout_rate_ci": stats.wilson(int(s["c_timeout_n"]), n),
        **window_info,
    }
    res.detail = f"candidate error rate {rate:.2%} ({k}/{n}, {int(s['c_timeout_n'])} timeouts; threshold {thr:.2%})"
    if throttled:
        res.detail += f"; {throttled} calls refused as too many not counted (shadow_load)"
    return res


def shadow_load(chk: Check, seg: str, s: PairStats, thr: float, sev: str) -> CheckResult:
    """The share of requests the candidate refused as too many calls (HTTP 429, or 503 with a
    Retry-After): the shadow's own load on the server, which says nothing about the model. It
    warns that the run left requests unjudged and that `max_rps` or `concurrency` should come
    down; error_rate never counts them."""
    n, k = int(s["n_req"]), int(s["c_throttled_n"])  # a segment has requests: n >= 1
    res = CheckResult(chk.id, chk.kind, seg, sev, thr, n)
    against_threshold(res, k, n, thr)
    res.extra = {"throttled": k}
    res.detail = f"{k / n:.2%} of calls ({k}/{n}) refused by the candidate as too many: the shadow's load (threshold {thr:.2%})"
    return res


def prediction_drift(
    chk: Check, seg: str, dist: dict[str, Any] | None, labels: dict[str, Any] | None, thr: float, sev: str
) -> CheckResult | None:
    if dist and dist["b"].sum() > 0:
        w = wasserstein_from_hist(dist["width"], dist["b"], dist["c"], float(dist.get("sd_b") or 0))
        res = CheckResult(chk.id, chk.kind, seg, sev, thr, int(dist["b"].sum()), value=w, exceeded=w >= thr)
        res.detail = f"normalised Wasserstein distance of candidate vs baseline scores {w:.3f} (threshold {thr})"
        res.extra = {"psi": psi_from_hist(dist["b"], dist["c"])}
        return res
    if labels and labels.get("b"):
        d = categorical_drift(labels["b"], labels["c"])
        n = int(sum(labels["b"].values()))
        res = CheckResult(chk.id, chk.kind, seg, sev, thr, n, value=d.score, exceeded=d.drifted if d.is_test else d.score >= thr)
        res.detail = f"{d.method} of candidate vs baseline labels {d.score:.3f}"
        return res
    return None


def field_diff(chk: Check, seg: str, st: Any, thr: float, sev: str) -> CheckResult | None:
    """Structured outputs: share of pairs with a counted field difference, above the noise."""
    if not st.n:
        return None
    res = CheckResult(chk.id, chk.kind, seg, sev, thr, st.n)
    if st.noise_n:
        against_noise(res, st.with_diffs, st.n, st.noise_with_diffs, st.noise_n, thr)
        res.detail = (
            f"{st.with_diffs / st.n:.2%} of sampled pairs differ in some field vs noise "
            f"{st.noise_with_diffs / st.noise_n:.2%} (threshold +{thr:.2%})"
        )
    else:
        against_threshold(res, st.with_diffs, st.n, thr)
        res.detail = f"{st.with_diffs / st.n:.2%} of sampled pairs differ in some field (threshold {thr:.2%})"
    res.extra = {"top_field_diffs": dict(st.fields.most_common(5))}
    return res


def _mean_test(total: float, squares: float, n: int) -> tuple[float, float]:
    mean = total / n
    var = max(squares / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return mean, math.sqrt(var / n) if n > 1 else math.inf


def ranking_overlap(chk: Check, seg: str, st: Any, thr: float, sev: str) -> CheckResult | None:
    """Rankings: mean overlap@k; fails when significantly *below* the threshold."""
    if not st.overlap_n:
        return None
    mean, se = _mean_test(st.overlap_sum, st.overlap_sq, st.overlap_n)
    res = CheckResult(chk.id, chk.kind, seg, sev, thr, st.overlap_n, value=mean, ci=stats.mean_ci(mean, se))
    res.p_value = float(norm.cdf((mean - thr) / se)) if se > 0 else (0.0 if mean < thr else 1.0)
    res.set_test(mean, se, thr, lower_is_worse=True)
    tau = st.tau_sum / st.tau_n if st.tau_n else None
    res.detail = f"mean overlap@k {mean:.3f} (threshold {thr}); mean Kendall tau {tau if tau is None else round(tau, 3)}"
    return res


def probability_distance(chk: Check, seg: str, st: Any, thr: float, sev: str) -> CheckResult | None:
    """Classifiers: mean Jensen-Shannon distance of class probabilities above the threshold."""
    if not st.js_n:
        return None
    mean, se = _mean_test(st.js_sum, st.js_sq, st.js_n)
    res = CheckResult(chk.id, chk.kind, seg, sev, thr, st.js_n, value=mean, ci=stats.mean_ci(mean, se))
    res.p_value = float(norm.sf((mean - thr) / se)) if se > 0 else (0.0 if mean > thr else 1.0)
    res.set_test(mean, se, thr)
    res.detail = f"mean Jensen-Shannon distance of class probabilities {mean:.4f} (threshold {thr})"
    return res


def window_quantile_index(windows: dict[str, list[dict[str, Any]]], quantiles: list[float], p: float) -> None:
    """Mark which entry of each window's quantile list is the check's quantile."""
    qi = sorted(set(quantiles)).index(p)
    for rows in windows.values():
        for m in rows:
            m["_qi"] = qi
