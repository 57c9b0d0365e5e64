"""Judge served traffic, unpaired: a canary's records against the stable's over the same time,
or the service's records since a rollback against its last-known-good window
(diff/served_evidence.py), with the same policy, decision rule (diff/decide.py) and verdict
document as a shadow run.

What each policy kind asks of two samples of traffic:
- error_rate: the subject's error rate exceeds the reference's by at most the threshold (the
  excess's standard error taken at the boundary, diff/checks.excess_se), sustained over
  `for_minutes` windows;
- latency: the subject/reference ratio of a latency quantile, read per block of wall-clock time
  (each side's quantile over the same slices: a burst of load reaches both) with batch means;
- score_shift: the difference of the two sides' mean scores, |difference| at most the threshold;
- prediction_drift: the distance between the two sides' score (or label) distributions (warns);
- feature_drift, null_spike: the inputs each side saw, the subject's against the reference's
  (warn: a traffic split that sends different traffic to each side shows here);
- dead_letters: records that could not be read.
Paired kinds (flips, |Δscore| quantiles, field diffs, rankings, outcomes, shadow load) have no
meaning between different requests: the verdict lists them as not applicable.

Rules as in a shadow run: GO only when every critical check is shown within its threshold in
`all` and within the segment margin in every segment that is not rare; NO_GO when one is shown
worse; PENDING otherwise, saying how much more traffic each side needs. A side with no traffic
(in the run or in a segment that is not rare) is never a pass."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
import orjson
from scipy.stats import norm

from shadowdiff.diff import checks as ck
from shadowdiff.diff import stats
from shadowdiff.diff.decide import Family, decide
from shadowdiff.diff.drift import categorical_drift, psi_from_hist
from shadowdiff.diff.judge import mark_segments, policy_summary, stable_numbers
from shadowdiff.diff.quality import threshold_for
from shadowdiff.diff.segments import ALL
from shadowdiff.diff.served_evidence import (
    LAT_QS,
    SegmentEvidence,
    ServedEvidence,
    feature_columns,
    gather,
    newest_manifests,
    source_complete,
)
from shadowdiff.schemas import VERDICT_SCHEMA_VERSION
from shadowdiff.schemas.config import ServedRunConfig
from shadowdiff.schemas.policy import Check, Policy
from shadowdiff.schemas.records import Status
from shadowdiff.schemas.verdict import Verdict, emitted

SERVED_KINDS = frozenset(
    {"error_rate", "latency", "score_shift", "prediction_drift", "feature_drift", "null_spike", "dead_letters"}
)
SIDE_NAMES = {"canary": ("stable", "canary"), "rollback": ("last-known-good", "current")}
MIN_PER_WINDOW = ck.MIN_PER_WINDOW


def judge_served(
    con: duckdb.DuckDBPyConnection, cfg: ServedRunConfig, policy: Policy, manifests: list[dict[str, Any]] | None = None
) -> Verdict:
    """The verdict document of a served-traffic run from `served_rows` (diff/served_evidence.load_served).
    Deterministic: the same rows and policy give the same document, `generated_at` aside."""
    manifests = manifests or []
    minutes = sorted({c.for_minutes for c in policy.checks if c.kind in ("error_rate", "latency") and c.for_minutes > 0})
    quantiles = sorted({*LAT_QS, *(c.quantile for c in policy.checks if c.kind == "latency")})
    ev = gather(con, cfg, manifests, minutes, quantiles)
    ref_name, sub_name = SIDE_NAMES[cfg.compare.mode]
    total = ev.all.b.n + ev.all.c.n
    segments, judged = _segment_status(ev, policy, total)
    results = _run_checks(con, ev, cfg, policy, judged)
    for r in results:
        r.noun = f"{sub_name} records"
    fields = [[f] for f in ev.fields]
    critical = [c.id for c in policy.checks if c.kind in SERVED_KINDS and c.severity == "critical"]
    family = decide(results, policy, ev.all.c.n, Family.declared(fields, policy, critical, 1))
    verdict, reasons = _verdict(ev, policy, results, segments, ref_name, sub_name)
    mix = traffic_mix(ev, policy)
    reasons += [m["note"] for m in mix if m["moved"]]
    not_applicable = sorted({c.id for c in policy.checks if c.kind not in SERVED_KINDS})
    doc: dict[str, Any] = {
        "schema_version": VERDICT_SCHEMA_VERSION,
        "run_id": cfg.run.id,
        "candidate": cfg.compare.answer_name(),
        "verdict": verdict.value,
        "reasons": reasons,
        "warnings": [f"{r.check_id} in {r.segment}: {r.detail}" for r in results if r.status == ck.WARN][:50],
        "failing_segments": sorted({r.segment for r in results if r.status == ck.FAIL}),
        "data": {
            "pairs": ev.all.c.n,
            "window": {
                "first_event": ev.t_min.isoformat() if ev.t_min else None,
                "last_event": ev.t_max.isoformat() if ev.t_max else None,
            },
            "offsets": _offsets(manifests) if manifests else _stored_offsets(con),
            "consumed": ev.consumed,
            "sampled": total,
            "dead_letters": ev.dead_letters,
        },
        "versions": {"candidate_model": cfg.compare.subject.version, "baseline": {"version": cfg.compare.reference.version}},
        "policy": policy_summary(policy),
        "statistics": {
            "correction": policy.correction,
            "alpha": policy.alpha,
            "tests_in_family": len(family),
            "decision": policy.decision,
            "latency_axis": "blocks of wall-clock time holding both sides' records",
            "note": "unpaired: the two sides answered different requests (two-sample tests)",
        },
        "segments": segments,
        "checks": [r.as_dict() for r in results],
        "examples": [],
        "served": {
            "mode": cfg.compare.mode,
            "reference": _side(ref_name, cfg.compare.reference, ev.all.b.n, ev.all.b.errors),
            "subject": _side(sub_name, cfg.compare.subject, ev.all.c.n, ev.all.c.errors),
            "traffic_mix": mix,
            "not_applicable": not_applicable,
            "complete": source_complete(manifests) if manifests else None,
            "restored": (verdict == Status.GO) if cfg.compare.mode == "rollback" else None,
        },
    }
    doc = stable_numbers(doc)
    doc["digest"] = hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()
    doc["generated_at"] = datetime.now(UTC).isoformat()
    return emitted(doc)


def _side(name: str, spec: Any, n: int, errors: int) -> dict[str, Any]:
    return {
        "name": name,
        "version": spec.version,
        "start": spec.start.isoformat() if spec.start else None,
        "end": spec.end.isoformat() if spec.end else None,
        "records": n,
        "errors": errors,
    }


def _offsets(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "source": c["source"],
            "partition": c["part"],
            "next_offset": c["next_offset"],
            "consumed": c["consumed"],
            "sampled": c["sampled"],
        }
        for m in newest_manifests(manifests).values()
        for c in m.get("checkpoints", [])
    ]


def _stored_offsets(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The writer's own checkpoints (a worker judging on its connection)."""
    rows = con.execute("SELECT source, part, next_offset, consumed, sampled FROM checkpoints ORDER BY 1, 2").fetchall()
    keys = ("source", "partition", "next_offset", "consumed", "sampled")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _segment_status(ev: ServedEvidence, policy: Policy, total: int) -> tuple[list[dict[str, Any]], set[str]]:
    """A segment is judged once both sides hold min_samples of it; one whose traffic is below
    min_segment_share of the run is rare (judged when it has them, never holding the verdict)."""
    out: list[dict[str, Any]] = []
    judged: set[str] = set()
    for seg in sorted(ev.segments, key=lambda s: (s != ALL, s)):
        e = ev.segments[seg]
        short = min(e.b.n, e.c.n)
        ok = short >= policy.min_samples
        out.append(
            {
                "segment": seg,
                "n": e.c.n,
                "n_pairs": e.b.n,
                "status": Status.GO.value if ok else Status.PENDING.value,
                "needed": max(0, policy.min_samples - short),
                "rare": seg != ALL and (e.b.n + e.c.n) < policy.min_segment_share * total,
                "exhausted": False,
            }
        )
        if ok:
            judged.add(seg)
    return out, judged


def _run_checks(
    con: duckdb.DuckDBPyConnection, ev: ServedEvidence, cfg: ServedRunConfig, policy: Policy, judged: set[str]
) -> list[ck.CheckResult]:
    results: list[ck.CheckResult] = []
    for chk in policy.checks:
        if chk.kind not in SERVED_KINDS or chk.severity == "off":
            continue
        if chk.kind == "dead_letters":
            results.append(_dead_letters(chk, ev))
            continue
        if chk.kind in ("feature_drift", "null_spike"):
            if ALL in judged:
                results += _feature_checks(con, chk, cfg)
            continue
        for seg, e in ev.segments.items():
            thr, sev = threshold_for(chk, seg)
            if sev == "off":
                continue
            if seg not in judged:
                if sev == "critical":
                    detail = f"{e.c.n} subject and {e.b.n} reference records of {policy.min_samples} needed on each side"
                    results.append(ck.CheckResult(chk.id, chk.kind, seg, sev, thr, e.c.n, status=ck.PENDING, detail=detail))
                continue
            r = _check(chk, thr, sev, e, ev.quantiles, ev.grid)
            if r is not None:
                results.append(r)
            elif seg == ALL and sev == "critical":
                what = {"latency": "latencies logged by both sides", "score_shift": "scores in both sides' answers"}.get(
                    chk.kind, "evidence"
                )
                results.append(ck.CheckResult(chk.id, chk.kind, seg, sev, thr, 0, status=ck.NA, detail=f"no {what}"))
    order = {c.id: i for i, c in enumerate(policy.checks)}
    results.sort(key=lambda r: (order[r.check_id], r.segment != ALL, r.segment, r.feature or ""))
    return results


def _check(
    chk: Check, thr: float, sev: str, e: SegmentEvidence, quantiles: list[float], grid: list[float]
) -> ck.CheckResult | None:
    if chk.kind == "error_rate":
        return error_excess(chk, e, thr, sev)
    if chk.kind == "latency":
        if e.b.n_lat == 0 or e.c.n_lat == 0:
            return None
        s: Any = {"n_bl": e.b.n_lat, "n_cl": e.c.n_lat, "n_pair": e.c.n, "b_lat_q": e.b.lat_q, "c_lat_q": e.c.lat_q}
        qi = quantiles.index(chk.quantile)
        windows = [
            {
                "n": min(w.get("b_n", 0), w.get("c_n", 0)),
                "b_q": w.get("b_q"),
                "c_q": w.get("c_q"),
                "_qi": qi,
                "window_start": w["window_start"],
            }
            for w in e.windows
            if w["minutes"] == chk.for_minutes
        ]
        return ck.latency(chk, e.segment, s, thr, sev, grid, windows or None, e.blocks, qi)
    if chk.kind == "score_shift":
        return mean_shift(chk, e, thr, sev)
    if chk.kind == "prediction_drift":
        labels = {"b": e.b.labels, "c": e.c.labels} if e.b.labels and e.c.labels else None
        return ck.prediction_drift(chk, e.segment, e.score_hist, labels, thr, sev)
    return None


def error_excess(chk: Check, e: SegmentEvidence, thr: float | None = None, sev: str | None = None) -> ck.CheckResult:
    """The subject's error rate over the reference's: at most the threshold, sustained."""
    thr = chk.threshold if thr is None else thr
    res = ck.CheckResult(chk.id, chk.kind, e.segment, sev or chk.severity, thr, e.c.n)
    ck.against_noise(res, e.c.errors, e.c.n, e.b.errors, e.b.n, thr)
    windows = [w for w in e.windows if w["minutes"] == chk.for_minutes]

    def excess(w: dict[str, Any]) -> float | None:
        if w.get("c_n", 0) < MIN_PER_WINDOW or w.get("b_n", 0) < MIN_PER_WINDOW:
            return None
        return float(w["c_err"] / w["c_n"] - w["b_err"] / w["b_n"])

    res.sustained, info = ck._sustained(windows or None, chk, excess, thr)  # the shadow's own rule of a sustained excess
    res.extra = {"errors": e.c.errors, "reference_errors": e.b.errors, "reference_n": e.b.n, **info}
    res.detail = (
        f"error rate {e.c.errors / e.c.n:.2%} ({e.c.errors}/{e.c.n}) vs {e.b.errors / e.b.n:.2%} ({e.b.errors}/{e.b.n}); "
        f"excess {res.value:+.2%} (threshold +{thr:.2%})"
    )
    return res


def mean_shift(chk: Check, e: SegmentEvidence, thr: float, sev: str) -> ck.CheckResult | None:
    """The difference of the two sides' mean scores (Welch's standard error)."""
    b, c = e.b, e.c
    if b.n_score < 2 or c.n_score < 2:
        return None
    mb, mc = b.score_sum / b.n_score, c.score_sum / c.n_score
    vb = max(b.score_sq / b.n_score - mb * mb, 0.0) * b.n_score / (b.n_score - 1)
    vc = max(c.score_sq / c.n_score - mc * mc, 0.0) * c.n_score / (c.n_score - 1)
    se = math.sqrt(vb / b.n_score + vc / c.n_score)
    diff = mc - mb
    res = ck.CheckResult(
        chk.id, chk.kind, e.segment, chk.severity, chk.threshold, c.n_score, value=diff, ci=stats.mean_ci(diff, se)
    )
    res.p_value = stats.p_mean_beyond(diff, se, chk.threshold)
    res.set_test(abs(diff), se, chk.threshold)
    res.extra = {"subject_mean": mc, "reference_mean": mb, "reference_n": b.n_score}
    res.detail = f"mean score {mc:.4f} vs {mb:.4f}: difference {diff:+.4f} (threshold ±{chk.threshold})"
    return res


def _dead_letters(chk: Check, ev: ServedEvidence) -> ck.CheckResult:
    n = max(ev.consumed, ev.dead_letters + ev.all.b.n + ev.all.c.n, 1)
    res = ck.CheckResult(chk.id, chk.kind, ALL, chk.severity, chk.threshold, n)
    ck.against_threshold(res, ev.dead_letters, n, chk.threshold)
    res.detail = f"{ev.dead_letters} of {n} log records could not be read (threshold {chk.threshold:.2%})"
    return res


def _feature_checks(con: duckdb.DuckDBPyConnection, chk: Check, cfg: ServedRunConfig) -> list[ck.CheckResult]:
    """The inputs each side saw, in the whole run: the subject's against the reference's."""
    names = [*cfg.features.numeric, *cfg.features.categorical]
    if not names:
        return []
    feature_columns(con, names)
    out: list[ck.CheckResult] = []
    for i, name in enumerate(names):
        col = f"f{i}"
        if chk.kind == "null_spike":
            null = f"({col} IS NULL OR {col} = 'null'::JSON)"
            (kb, nb, kc, nc) = con.execute(
                f"""SELECT count(*) FILTER (WHERE side = 'b' AND {null}), count(*) FILTER (WHERE side = 'b'),
                           count(*) FILTER (WHERE side = 'c' AND {null}), count(*) FILTER (WHERE side = 'c')
                    FROM sided_features"""
            ).fetchone() or (0, 0, 0, 0)
            res = ck.CheckResult(chk.id, chk.kind, ALL, chk.severity, chk.threshold, int(nc), feature=name)
            ck.against_noise(res, int(kc), int(nc), int(kb), int(nb), chk.threshold)
            share_c, share_b = kc / max(nc, 1), kb / max(nb, 1)
            res.detail = f"{name}: null in {share_c:.2%} of subject inputs vs {share_b:.2%} (threshold +{chk.threshold:.2%})"
            out.append(res)
        elif name in cfg.features.numeric:
            rows = con.execute(f"SELECT side, TRY_CAST({col} AS DOUBLE) AS x FROM sided_features WHERE x IS NOT NULL").fetchall()
            b = np.array([x for s, x in rows if s == "b"], float)
            c = np.array([x for s, x in rows if s == "c"], float)
            if len(b) < 10 or len(c) < 10:
                continue
            edges = np.unique(np.quantile(b, np.linspace(0, 1, 101)))
            hb = np.histogram(np.clip(b, edges[0], edges[-1]), edges)[0]
            hc = np.histogram(np.clip(c, edges[0], edges[-1]), edges)[0]
            psi = psi_from_hist(hb.astype(float), hc.astype(float))
            res = ck.CheckResult(
                chk.id, chk.kind, ALL, chk.severity, chk.threshold, len(c), value=psi, exceeded=psi >= chk.threshold
            )
            res.feature = name
            res.detail = f"{name}: PSI of subject vs reference inputs {psi:.3f} (threshold {chk.threshold})"
            out.append(res)
        else:
            rows = con.execute(
                f"SELECT side, {col} ->> '$' AS v, count(*) FROM sided_features WHERE v IS NOT NULL GROUP BY ALL"
            ).fetchall()
            cb = {str(v): int(n) for s, v, n in rows if s == "b"}
            cc = {str(v): int(n) for s, v, n in rows if s == "c"}
            d = categorical_drift(cb, cc)
            res = ck.CheckResult(chk.id, chk.kind, ALL, chk.severity, chk.threshold, sum(cc.values()), value=d.score)
            res.exceeded = d.drifted if d.is_test else d.score >= chk.threshold
            res.feature = name
            res.detail = f"{name}: {d.method} of subject vs reference inputs {d.score:.3f}"
            out.append(res)
    return out


def traffic_mix(ev: ServedEvidence, policy: Policy) -> list[dict[str, Any]]:
    """Each segment's share of each side's traffic: a share that moved (by at least a quarter of
    the reference's, and beyond chance at alpha over all segments) is the traffic that changed,
    reported as such: the checks compare within each segment, so a moved mix is not blamed on
    the model."""
    out: list[dict[str, Any]] = []
    nb, nc = ev.all.b.n, ev.all.c.n
    segs = [e for s, e in ev.segments.items() if s != ALL]
    if nb == 0 or nc == 0 or not segs:
        return out
    z_crit = float(norm.isf(policy.alpha / 2 / len(segs)))
    for e in sorted(segs, key=lambda e: e.segment):
        pb, pc = e.b.n / nb, e.c.n / nc
        se = math.sqrt(max(pb * (1 - pb), 1e-12) / nb + max(pc * (1 - pc), 1e-12) / nc)
        moved = abs(pc - pb) >= 0.25 * max(pb, 1 / nb) and abs(pc - pb) / se > z_crit
        out.append(
            {
                "segment": e.segment,
                "reference_share": pb,
                "subject_share": pc,
                "moved": bool(moved),
                "note": f"{e.segment}: its share of the traffic moved from {pb:.1%} to {pc:.1%}: the traffic changed there, "
                "compared within the segment and not counted against the model",
            }
        )
    return out


def _verdict(
    ev: ServedEvidence,
    policy: Policy,
    results: list[ck.CheckResult],
    segments: list[dict[str, Any]],
    ref_name: str,
    sub_name: str,
) -> tuple[Status, list[str]]:
    failing, undecided = mark_segments(results, segments)
    short = [s for s in segments if s["needed"] > 0 and not s["rare"]]
    not_assessed = [r for r in results if r.status == ck.NA and r.severity == "critical"]
    span_min = (ev.t_max - ev.t_min).total_seconds() / 60 if ev.t_min and ev.t_max else 0.0
    restored = ev.compare.mode == "rollback"
    reasons: list[str] = []
    if failing:
        verdict = Status.NO_GO
        if restored:
            reasons.append(f"not restored: the {sub_name} traffic still differs from the {ref_name} window")
        order = {c.id: i for i, c in enumerate(policy.checks)}
        for r in sorted((r for r in results if r.status == ck.FAIL), key=lambda r: (order[r.check_id], r.segment)):
            p_adj = f" (p_adj={r.p_adjusted:.2g})" if r.p_adjusted is not None else ""
            reasons.append(f"{r.check_id} failed in {r.segment}: {r.detail}{p_adj}")
    elif ev.all.b.n == 0 or ev.all.c.n == 0:
        verdict = Status.PENDING
        for name, side, n in ((ref_name, ev.compare.reference, ev.all.b.n), (sub_name, ev.compare.subject, ev.all.c.n)):
            if n == 0:
                reasons.append(f"no data: the {name} side (version {side.version}) has no records yet")
    elif short and (policy.require_all_segments or any(s["segment"] == ALL for s in short)):
        verdict = Status.PENDING
        for s in short:
            e = ev.segments[s["segment"]]
            missing = [f"the {name} has {n}" for name, n in ((sub_name, e.c.n), (ref_name, e.b.n)) if n < policy.min_samples]
            what = "no traffic" if min(e.b.n, e.c.n) == 0 else "too little traffic"
            reasons.append(f"{s['segment']}: {what}: {' and '.join(missing)} of the {policy.min_samples} records each side needs")
    elif span_min < policy.min_duration_minutes:
        verdict = Status.PENDING
        reasons.append(f"data spans {span_min:.1f} min of event time, policy needs {policy.min_duration_minutes:g}")
    elif not_assessed:
        verdict = Status.PENDING
        reasons += [f"{r.check_id} not assessable in {r.segment}: {r.detail}" for r in not_assessed]
    elif undecided:
        verdict = Status.PENDING
        for r in sorted(undecided, key=lambda r: -(r.pairs_needed or 0))[:10]:
            reasons.append(f"{r.check_id} in {r.segment}: {r.detail}")
        needed = [r.pairs_needed for r in undecided if r.pairs_needed]
        if needed:
            reasons.append(f"about {max(needed):,} {sub_name} records in all would show every check within at the current spread")
    else:
        verdict = Status.GO
        passed = len([r for r in results if r.status == ck.PASS])
        lead = "restored: " if restored else ""
        reasons.append(
            f"{lead}all {passed} checks shown within their thresholds against the {ref_name} in {len(segments)} segments"
        )
    return verdict, reasons
