"""Data-quality and run-level checks: feature drift, null spikes, out-of-range values and new
categories per segment, the dead-letter rate and feature-pipeline version pairing."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from shadowdiff.diff import aggregate as agg
from shadowdiff.diff import checks as ck
from shadowdiff.diff.features import FeatureStats, FeatureTables
from shadowdiff.diff.load import RunInfo
from shadowdiff.diff.segments import ALL, SegmentSets
from shadowdiff.diff.stats import p_diff_above, wilson
from shadowdiff.schemas.config import ModelSpec
from shadowdiff.schemas.policy import Check, Policy


def threshold_for(chk: Check, seg: str) -> tuple[float, str]:
    thr: float = chk.threshold
    sev: str = chk.severity
    for o in chk.overrides:
        if o.segment == seg:
            thr = o.threshold if o.threshold is not None else thr
            sev = o.severity or sev
    return thr, sev


def feature_checks(
    con: duckdb.DuckDBPyConnection,
    info: RunInfo,
    sets: SegmentSets,
    policy: Policy,
    judged: set[str],
    seg_exprs: list[str],
    shared: dict[str, list[FeatureStats]] | None = None,
) -> list[ck.CheckResult]:
    """Feature checks per segment. Features describe the traffic, not a candidate's answers:
    the candidates of one run judged together pass the same `shared` dict and collect the
    features' statistics once."""
    kinds = {c.kind for c in policy.checks}
    if not (set(FEATURE_KINDS) & kinds) or not (info.numeric or info.categorical):
        return []
    key = repr((seg_exprs, sets.sets, policy.reference))
    stats_ = shared.get(key) if shared is not None else None
    if stats_ is None:
        stats_ = FeatureTables(con, info, sets, policy.reference, seg_exprs).collect()
        if shared is not None:
            shared[key] = stats_
    out: list[ck.CheckResult] = []
    for chk in policy.checks:
        evaluate = FEATURE_KINDS.get(chk.kind)
        if evaluate is None:
            continue
        for f in stats_:
            if f.segment not in judged:
                continue
            thr, sev = threshold_for(chk, f.segment)
            if sev != "off" and (r := evaluate(chk, f, thr, sev)) is not None:
                out.append(r)
    return out


def _feature_drift(chk: Check, f: FeatureStats, thr: float, sev: str) -> ck.CheckResult | None:
    if f.drift is None:
        return None
    d = f.drift
    r = ck.CheckResult(chk.id, chk.kind, f.segment, sev, thr, f.n_cur, value=d.score, feature=f.feature)
    if d.is_test:
        r.p_value = d.score
    else:
        r.exceeded = d.score >= thr
    r.detail = f"{d.method} {d.score:.3f} (PSI {d.psi:.3f})" if d.psi is not None else f"{d.method} {d.score:.3f}"
    r.extra = {"method": d.method, "psi": d.psi, "n_ref": d.n_ref}
    return r


def _null_spike(chk: Check, f: FeatureStats, thr: float, sev: str) -> ck.CheckResult | None:
    if not f.n_cur:
        return None
    if not f.n_ref:
        if f.segment != ALL:
            return None
        # a spike is a rise over what is normal; a feature that is often null in all traffic
        # is not one, so without a reference this check cannot be assessed
        r = ck.CheckResult(chk.id, chk.kind, ALL, sev, thr, f.n_cur, feature=f.feature, status=ck.NA)
        r.value = f.nulls_cur / f.n_cur
        r.detail = f"null share {r.value:.2%}; no reference traffic to compare with (set policy.reference)"
        return r
    share = f.nulls_cur / f.n_cur
    r = _share_check(chk, f, sev, thr, f.nulls_cur, "")
    r.ci = wilson(f.nulls_cur, f.n_cur)
    r.p_value = p_diff_above(f.nulls_cur, f.n_cur, f.nulls_ref, f.n_ref, thr)
    se = math.sqrt(ck.rate_variance(f.nulls_cur, f.n_cur) + ck.rate_variance(f.nulls_ref, f.n_ref))
    r.set_test(share - f.nulls_ref / f.n_ref, se, thr)
    r.detail = f"null share {share:.2%} vs reference {f.nulls_ref / f.n_ref:.2%} (threshold +{thr:.2%})"
    return r


def _out_of_range(chk: Check, f: FeatureStats, thr: float, sev: str) -> ck.CheckResult | None:
    if f.kind != "numeric" or not f.n_ref:
        return None
    return _share_check(chk, f, sev, thr, f.out_of_range, f"{f.out_of_range} values outside the reference range")


def _new_category(chk: Check, f: FeatureStats, thr: float, sev: str) -> ck.CheckResult | None:
    if f.kind != "categorical" or not f.n_ref:
        return None
    return _share_check(chk, f, sev, thr, f.new_category, f"{f.new_category} values of unseen categories {f.new_values[:5]}")


def _share_check(chk: Check, f: FeatureStats, sev: str, thr: float, k: int, detail: str) -> ck.CheckResult:
    """A check on the share of a segment's rows with some finding (k of n), tested against thr."""
    r = ck.CheckResult(chk.id, chk.kind, f.segment, sev, thr, f.n_cur, feature=f.feature)
    ck.against_threshold(r, k, max(f.n_cur, 1), thr)
    r.detail = detail
    return r


FeatureEvaluate = Callable[[Check, FeatureStats, float, str], "ck.CheckResult | None"]

# kinds judged on the features of the requests, per segment and feature
FEATURE_KINDS: dict[str, FeatureEvaluate] = {
    "feature_drift": _feature_drift,
    "null_spike": _null_spike,
    "out_of_range": _out_of_range,
    "new_category": _new_category,
}


@dataclass
class RunFacts:
    """What whole-run checks read: the store, the candidate's spec and the judged segments."""

    con: duckdb.DuckDBPyConnection
    spec: ModelSpec
    sets: SegmentSets
    judged: set[str]
    duplicates: int


def run_level_checks(
    con: duckdb.DuckDBPyConnection,
    spec: ModelSpec,
    sets: SegmentSets,
    policy: Policy,
    judged: set[str],
    duplicates: int = 0,
) -> list[ck.CheckResult]:
    facts = RunFacts(con, spec, sets, judged, duplicates)
    out: list[ck.CheckResult] = []
    for chk in policy.checks:
        kind = RUN_KINDS.get(chk.kind)
        if kind is not None:
            thr, sev = threshold_for(chk, ALL)
            out += kind.evaluate(chk, facts, thr, sev)
    return out


def _run_share(chk: Check, sev: str, thr: float, k: int, n: int) -> ck.CheckResult:
    """A whole-run check on the share k/n of messages or requests with some finding."""
    r = ck.CheckResult(chk.id, chk.kind, ALL, sev, thr, n)
    ck.against_threshold(r, k, n, thr)
    return r


def _duplicate_requests(chk: Check, facts: RunFacts, thr: float, sev: str) -> list[ck.CheckResult]:
    (stored,) = facts.con.execute("SELECT count(*) FROM requests").fetchone() or (0,)
    if not stored:
        return []
    r = _run_share(chk, sev, thr, facts.duplicates, int(stored))
    r.detail = f"{facts.duplicates} of {stored} stored requests repeat an earlier request id; each counts once"
    r.extra = {"duplicates": facts.duplicates}
    return [r]


def _dead_letters(chk: Check, facts: RunFacts, thr: float, sev: str) -> list[ck.CheckResult]:
    con = facts.con
    consumed, dead = con.execute(
        "SELECT (SELECT coalesce(sum(consumed), 0) FROM checkpoints), (SELECT count(*) FROM dead_letters)"
    ).fetchone() or (0, 0)
    if not consumed:
        return []
    by = dict(con.execute("SELECT reason, count(*) FROM dead_letters GROUP BY 1 ORDER BY 2 DESC").fetchall())
    r = _run_share(chk, sev, thr, int(dead), int(consumed))
    r.detail = f"{dead} of {consumed} messages dead-lettered {by}"
    r.extra = {"by_reason": by}
    return [r]


def _version_pairing(chk: Check, facts: RunFacts, thr: float, sev: str) -> list[ck.CheckResult]:
    expected = facts.spec.feature_version
    if not expected:
        return []
    out = []
    for seg, v in agg.version_pairs(facts.con, facts.sets, str(expected)).items():
        if seg not in facts.judged and seg != ALL:
            continue
        t, s = threshold_for(chk, seg)
        share = v["mismatched"] / v["n"] if v["n"] else 0.0
        r = ck.CheckResult(chk.id, chk.kind, seg, s, t, int(v["n"]), value=share, exceeded=share > t)
        r.detail = (
            f"{v['mismatched']} requests built by feature pipeline {sorted(v['seen'] or [])} fed a candidate built for {expected}"
        )
        out.append(r)
    return out


@dataclass(frozen=True)
class RunKind:
    evaluate: Callable[[Check, RunFacts, float, str], list[ck.CheckResult]]
    # judged without pairs, so never "pending" for a short segment
    without_pairs: bool


# kinds judged on the whole run (version pairing: per segment, from the stored requests)
RUN_KINDS: dict[str, RunKind] = {
    "duplicate_requests": RunKind(_duplicate_requests, without_pairs=False),
    "dead_letters": RunKind(_dead_letters, without_pairs=True),
    "version_pairing": RunKind(_version_pairing, without_pairs=True),
}
