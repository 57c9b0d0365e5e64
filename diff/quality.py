"""Data-quality and run-level checks: feature drift, null spikes, out-of-range values and new
categories per segment, the dead-letter rate and feature-pipeline version pairing."""

from __future__ import annotations

import math
from typing import Any

import duckdb

from shadowdiff.diff import aggregate as agg
from shadowdiff.diff import checks as ck
from shadowdiff.diff.features import FeatureStats, FeatureTables
from shadowdiff.diff.load import RunInfo
from shadowdiff.diff.segments import ALL, SegmentSets
from shadowdiff.diff.stats import p_diff_above, wilson
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
    if not ({"feature_drift", "null_spike", "out_of_range", "new_category"} & kinds) or not (info.numeric or info.categorical):
        return []
    key = repr((seg_exprs, sets.sets, policy.reference))
    stats_ = shared.get(key) if shared is not None else None
    if stats_ is None:
        stats_ = FeatureTables(con, info, sets, policy.reference, seg_exprs).collect()
        if shared is not None:
            shared[key] = stats_
    out: list[ck.CheckResult] = []
    for chk in policy.checks:
        for f in stats_:
            if f.segment not in judged:
                continue
            thr, sev = threshold_for(chk, f.segment)
            if sev == "off":
                continue
            r: ck.CheckResult | None = None
            if chk.kind == "feature_drift" and f.drift is not None:
                d = f.drift
                r = ck.CheckResult(chk.id, chk.kind, f.segment, sev, thr, f.n_cur, value=d.score, feature=f.feature)
                if d.is_test:
                    r.p_value = d.score
                else:
                    r.exceeded = d.score >= thr
                r.detail = f"{d.method} {d.score:.3f} (PSI {d.psi:.3f})" if d.psi is not None else f"{d.method} {d.score:.3f}"
                r.extra = {"method": d.method, "psi": d.psi, "n_ref": d.n_ref}
            elif chk.kind == "null_spike" and f.n_cur and f.n_ref:
                share = f.nulls_cur / f.n_cur
                r = _share_check(chk, f, sev, thr, f.nulls_cur, "")
                r.ci = wilson(f.nulls_cur, f.n_cur)
                r.p_value = p_diff_above(f.nulls_cur, f.n_cur, f.nulls_ref, f.n_ref, thr)
                se = math.sqrt(ck.rate_variance(f.nulls_cur, f.n_cur) + ck.rate_variance(f.nulls_ref, f.n_ref))
                r.set_test(share - f.nulls_ref / f.n_ref, se, thr)
                r.detail = f"null share {share:.2%} vs reference {f.nulls_ref / f.n_ref:.2%} (threshold +{thr:.2%})"
            elif chk.kind == "null_spike" and f.n_cur and f.segment == ALL:
                # a spike is a rise over what is normal; a feature that is often null in all
                # traffic is not one, so without a reference this check cannot be assessed
                r = ck.CheckResult(chk.id, chk.kind, ALL, sev, thr, f.n_cur, feature=f.feature, status=ck.NA)
                r.value = f.nulls_cur / f.n_cur
                r.detail = f"null share {r.value:.2%}; no reference traffic to compare with (set policy.reference)"
            elif chk.kind == "out_of_range" and f.kind == "numeric" and f.n_ref:
                r = _share_check(chk, f, sev, thr, f.out_of_range, f"{f.out_of_range} values outside the reference range")
            elif chk.kind == "new_category" and f.kind == "categorical" and f.n_ref:
                r = _share_check(
                    chk, f, sev, thr, f.new_category, f"{f.new_category} values of unseen categories {f.new_values[:5]}"
                )
            if r is not None:
                out.append(r)
    return out


def _share_check(chk: Check, f: FeatureStats, sev: str, thr: float, k: int, detail: str) -> ck.CheckResult:
    """A check on the share of a segment's rows with some finding (k of n), tested against thr."""
    r = ck.CheckResult(chk.id, chk.kind, f.segment, sev, thr, f.n_cur, feature=f.feature)
    ck.against_threshold(r, k, max(f.n_cur, 1), thr)
    r.detail = detail
    return r


def _run_share(chk: Check, sev: str, thr: float, k: int, n: int) -> ck.CheckResult:
    """A whole-run check on the share k/n of messages or requests with some finding."""
    r = ck.CheckResult(chk.id, chk.kind, ALL, sev, thr, n)
    ck.against_threshold(r, k, n, thr)
    return r


def run_level_checks(
    con: duckdb.DuckDBPyConnection,
    info: RunInfo,
    spec: dict[str, Any],
    sets: SegmentSets,
    policy: Policy,
    judged: set[str],
    duplicates: int = 0,
) -> list[ck.CheckResult]:
    out: list[ck.CheckResult] = []
    for chk in policy.checks:
        thr, sev = threshold_for(chk, ALL)
        if chk.kind == "duplicate_requests":
            (stored,) = con.execute("SELECT count(*) FROM requests").fetchone() or (0,)
            if stored:
                r = _run_share(chk, sev, thr, duplicates, int(stored))
                r.detail = f"{duplicates} of {stored} stored requests repeat an earlier request id; each counts once"
                r.extra = {"duplicates": duplicates}
                out.append(r)
        elif chk.kind == "dead_letters":
            consumed, dead = con.execute(
                "SELECT (SELECT coalesce(sum(consumed), 0) FROM checkpoints), (SELECT count(*) FROM dead_letters)"
            ).fetchone() or (0, 0)
            by = dict(con.execute("SELECT reason, count(*) FROM dead_letters GROUP BY 1 ORDER BY 2 DESC").fetchall())
            if consumed:
                r = _run_share(chk, sev, thr, int(dead), int(consumed))
                r.detail = f"{dead} of {consumed} messages dead-lettered {by}"
                r.extra = {"by_reason": by}
                out.append(r)
        elif chk.kind == "version_pairing" and spec.get("feature_version"):
            rows = agg.version_pairs(con, sets, str(spec["feature_version"]))
            for seg, v in rows.items():
                if seg not in judged and seg != ALL:
                    continue
                t, s = threshold_for(chk, seg)
                share = v["mismatched"] / v["n"] if v["n"] else 0.0
                r = ck.CheckResult(chk.id, chk.kind, seg, s, t, int(v["n"]), value=share, exceeded=share > t)
                r.detail = (
                    f"{v['mismatched']} requests built by feature pipeline {sorted(v['seen'] or [])} fed a "
                    f"candidate built for {spec['feature_version']}"
                )
                out.append(r)
    return out
