"""Outcome checks: is the candidate no worse than the baseline, on the requests whose outcome
arrived? Every one is a paired difference, candidate minus baseline, per request: both models
answered the same requests, so what differs between them is the models, not the traffic, and a
paired comparison needs far fewer outcomes than comparing two periods (bench/outcome_bench.py
measures how many fewer).

- outcome_error: the error-rate difference. Only the discordant pairs (one model right, the
  other wrong) carry information, as in McNemar's test: est = (c_only_wrong - b_only_wrong)/n.
- outcome_brier, outcome_log_loss: the proper scores of probability scores.
- outcome_abs_error, outcome_sq_error: regression errors, in the outcome's units.

Each is tested like the other mean checks (diff/decide.py: Gaussian-mixture e-processes, valid
however often the run is judged while outcomes trickle in): shown worse than the threshold
(NO_GO if critical), shown within it, or undecided with how many outcomes it needs. A candidate
shown better is said so with its interval."""

from __future__ import annotations

import math
from typing import Any

from scipy.stats import norm

from shadowdiff.diff import checks as ck
from shadowdiff.diff.outcomes import expected_calibration_error
from shadowdiff.diff.segments import ALL
from shadowdiff.diff.stats import mean_ci
from shadowdiff.schemas.policy import Check

# what each kind compares, over which of the pairs with an outcome
_MEANS = {
    "outcome_brier": ("n_prob", "sum_d_brier", "sum_d_brier2", "sum_brier_b", "sum_brier_c", "Brier score"),
    "outcome_log_loss": ("n_prob", "sum_d_ll", "sum_d_ll2", "sum_ll_b", "sum_ll_c", "log loss"),
    "outcome_abs_error": ("n_reg", "sum_d_ae", "sum_d_ae2", "sum_ae_b", "sum_ae_c", "mean absolute error"),
    "outcome_sq_error": ("n_reg", "sum_d_se", "sum_d_se2", "sum_se_b", "sum_se_c", "mean squared error"),
}
_NEEDS = {
    "outcome_error": "baseline and candidate labels with a labelled outcome",
    "outcome_brier": "probability scores (0..1) of both models with a 0/1 or labelled outcome",
    "outcome_log_loss": "probability scores (0..1) of both models with a 0/1 or labelled outcome",
    "outcome_abs_error": "scores of both models with a numeric outcome",
    "outcome_sq_error": "scores of both models with a numeric outcome",
}


def outcome_check(
    chk: Check, seg: str, st: dict[str, Any] | None, thr: float, sev: str, min_outcomes: int
) -> ck.CheckResult | None:
    """The check's result in one segment; None for a segment without pairs. A segment with
    fewer than `min_outcomes` usable outcomes waits (undecided while critical: the verdict stays
    PENDING and says how many more); the whole run with outcomes none of which this kind can
    use is not assessable."""
    if st is None:
        return None
    n_key = "n_cls" if chk.kind == "outcome_error" else _MEANS[chk.kind][0]
    n, n_out, n_pairs = int(st[n_key]), int(st["n_out"]), int(st["n_pairs"])
    res = ck.CheckResult(chk.id, chk.kind, seg, sev, thr, n, unit="outcomes", segment_margin=False)
    res.extra = {"pairs": n_pairs, "with_outcome": n_out, "usable": n}
    if n < min_outcomes:
        if n_out >= min_outcomes and n == 0:
            if seg != ALL:
                return None
            res.status = ck.NA
            res.detail = f"{n_out} pairs have an outcome, none with {_NEEDS[chk.kind]}"
            return res
        res.waiting = f"{n} of {min_outcomes} outcomes needed ({n_out} of {n_pairs} pairs have their outcome so far)"
        res.detail = f"{n} usable outcomes in this segment"
        return res
    if chk.kind == "outcome_error":
        _error_rate(res, st, thr)
    else:
        _mean_difference(res, st, thr, chk.kind)
    calibration = st.get("calibration") or {}
    ece = {side: expected_calibration_error(bins) for side, bins in calibration.items()}
    if ece:
        res.extra["calibration_error"] = ece
    return res


def _error_rate(res: ck.CheckResult, st: dict[str, Any], thr: float) -> None:
    n = res.n
    c_only, b_only = int(st["c_only_wrong"]), int(st["b_only_wrong"])
    est = (c_only - b_only) / n
    # the variance of a difference of -1/0/+1 per pair is q - est^2 (q: the discordant share).
    # Few discordant pairs make the observed q too small to trust: it is smoothed, and taken at
    # least at the boundary of the hypotheses (a true difference of thr needs q >= thr)
    q = (c_only + b_only + 0.5) / (n + 1)
    var = max(q - est * est, max(q, abs(thr)) - thr * thr, 1.0 / (n * n))
    se = math.sqrt(var / n)
    b_err, c_err = int(st["b_wrong"]) / n, int(st["c_wrong"]) / n
    res.value, res.ci = est, mean_ci(est, se)
    res.p_value = float(norm.sf((est - thr) / se))
    res.set_test(est, se, thr)
    res.extra |= {
        "baseline_error_rate": b_err,
        "candidate_error_rate": c_err,
        "baseline_accuracy": 1 - b_err,
        "candidate_accuracy": 1 - c_err,
        "candidate_only_wrong": c_only,
        "baseline_only_wrong": b_only,
    }
    res.detail = (
        f"candidate error rate {c_err:.2%} vs baseline {b_err:.2%} on {n:,} requests with outcomes "
        f"(difference {est * 100:+.2f} points from {c_only:,} vs {b_only:,} discordant pairs; threshold +{thr * 100:g} points)"
    )


def _mean_difference(res: ck.CheckResult, st: dict[str, Any], thr: float, kind: str) -> None:
    n = res.n
    _, s_d, s_d2, s_b, s_c, what = _MEANS[kind]
    mean = float(st[s_d]) / n
    var = max(float(st[s_d2]) / n - mean * mean, 0.0) * n / (n - 1)
    se = math.sqrt(var / n) or 1e-12
    b, c = float(st[s_b]) / n, float(st[s_c]) / n
    res.value, res.ci = mean, mean_ci(mean, se)
    res.p_value = float(norm.sf((mean - thr) / se))
    res.set_test(mean, se, thr)
    res.extra |= {"baseline": b, "candidate": c, "metric": what}
    res.detail = (
        f"candidate {what} {c:.4g} vs baseline {b:.4g} on {n:,} requests with outcomes "
        f"(difference {mean:+.4g}; threshold +{thr:g})"
    )


def say_better(results: list[ck.CheckResult]) -> None:
    """After the decision: an outcome check whose whole interval is below zero, by more than a
    hundredth of its threshold (less is rounding of equal answers, not a better model), says
    that the candidate is better, with the interval (the run's decision is unchanged by it)."""
    for r in results:
        if r.unit != "outcomes" or r.ci is None or r.status not in (ck.PASS, ck.UNDECIDED):
            continue
        if r.ci[1] < -0.01 * abs(r.threshold):
            r.extra["candidate_better"] = True
            r.detail += f"; the candidate is better: difference {r.value:+.4g}, interval [{r.ci[0]:+.4g}, {r.ci[1]:+.4g}]"
