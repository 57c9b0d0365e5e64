"""Judge a candidate: aggregates → checks → one multiple-testing correction → verdict.

Verdict rules (also in the README):
- NO_GO when any critical check fails in any judged segment (a confident failure counts even
  while other segments are still short of data);
- else PENDING when the run (or, with require_all_segments, any segment) has fewer pairs than
  `min_samples`, or spans less than `min_duration_minutes` of event time; the verdict says how
  many more pairs each segment needs;
- else GO.
Tests (proportions, means, quantile ratios, null shares, small-sample KS/chi-square) form one
family corrected by Holm (FWER) or Benjamini-Hochberg (FDR); distance checks (Wasserstein,
Jensen-Shannon) are effect-size thresholds outside the family."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson

from diff import aggregate as agg
from diff import checks as ck
from diff.comparators import json_diff
from diff.features import FeatureStats, FeatureTables
from diff.load import RunInfo, build_pairs, ident, run_info
from diff.outputs import compare_outputs
from diff.segments import ALL, SegmentSets
from diff.stats import adjust, p_diff_above, p_rate_above, wilson
from schemas import VERDICT_SCHEMA_VERSION
from schemas.policy import Check, Policy
from schemas.records import BASELINE, Status, candidate_variant


def _threshold(chk: Check, seg: str) -> tuple[float, str]:
    thr: float = chk.threshold
    sev: str = chk.severity
    for o in chk.overrides:
        if o.segment == seg:
            thr = o.threshold if o.threshold is not None else thr
            sev = o.severity or sev
    return thr, sev


def policy_digest(policy: Policy) -> str:
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()


def judge(con: duckdb.DuckDBPyConnection, policy: Policy, candidate: str | None = None) -> dict[str, Any]:
    """The verdict document (schemas/verdict.v1.schema.json) for one candidate of the run whose
    tables `con` sees. Deterministic: the same stored pairs and policy give the same document,
    `generated_at` aside."""
    info = run_info(con)
    names = [c["name"] for c in info.candidates]
    cand = candidate or names[0]
    if cand not in names:
        raise KeyError(f"candidate {cand!r} not in run (has {names})")
    spec = next(c for c in info.candidates if c["name"] == cand)
    fields = [f for f in (policy.segments or info.segment_fields) if f in info.segment_fields]
    sets = SegmentSets(fields, info.combinations)
    seg_exprs = build_pairs(con, info, cand, fields, policy.max_segment_values)

    lat_checks = [c for c in policy.checks if c.kind == "latency"]
    lat_qs = sorted({0.5, 0.95, 0.99, *(c.quantile for c in lat_checks)})
    grid = agg.latency_grid(lat_qs)
    tol = next((c.tolerance for c in policy.checks if c.kind == "score_diff"), 0.05)
    pstats = agg.pair_stats(con, sets, tol, grid)
    widths = sorted({c.for_minutes for c in policy.checks if c.kind in ("latency", "error_rate") and c.for_minutes > 0})
    windows = {w: agg.per_window(con, sets, lat_qs, w) for w in widths}
    dists = agg.score_distributions(con, sets)
    labels = agg.label_counts(con, sets)

    segments: list[dict[str, Any]] = []
    judged: set[str] = set()
    for seg in sorted(pstats, key=lambda s: (s != ALL, s)):
        n = int(pstats[seg]["n_req"])
        ok = n >= policy.min_samples
        segments.append(
            {
                "segment": seg,
                "n": n,
                "n_pairs": int(pstats[seg]["n_pair"]),
                "status": Status.GO.value if ok else Status.PENDING.value,
                "needed": max(0, policy.min_samples - n),
            }
        )
        if ok:
            judged.add(seg)

    results: list[ck.CheckResult] = []
    for chk in policy.checks:
        for seg, s in pstats.items():
            thr, sev = _threshold(chk, seg)
            if sev == "off":
                continue
            if seg not in judged:
                if chk.kind not in ("dead_letters", "version_pairing"):
                    results.append(
                        ck.CheckResult(
                            chk.id,
                            chk.kind,
                            seg,
                            sev,
                            thr,
                            int(s["n_req"]),
                            status=ck.PENDING,
                            detail=f"{int(s['n_req'])} of {policy.min_samples} pairs needed",
                        )
                    )
                continue
            r: ck.CheckResult | None = None
            if chk.kind == "label_flip":
                r = ck.label_flip(chk, seg, s, thr, sev)
            elif chk.kind == "score_diff":
                r = ck.score_diff(chk, seg, s, thr, sev)
            elif chk.kind == "score_shift":
                r = ck.score_shift(chk, seg, s, thr, sev)
            elif chk.kind == "latency":
                mins = windows.get(chk.for_minutes, {}).get(seg)
                if mins:
                    ck.minute_quantile_index({seg: mins}, lat_qs, chk.quantile)
                r = ck.latency(chk, seg, s, thr, sev, grid, mins)
            elif chk.kind == "error_rate":
                r = ck.error_rate(chk, seg, s, thr, sev, windows.get(chk.for_minutes, {}).get(seg))
            elif chk.kind == "prediction_drift":
                r = ck.prediction_drift(chk, seg, dists.get(seg), labels.get(seg), thr, sev)
            if r is not None:
                results.append(r)

    comparisons = compare_outputs(con, sets, cand, info.config.get("output", {}))
    for chk in policy.checks:
        fn = {
            "field_diff": ck.field_diff,
            "ranking_overlap": ck.ranking_overlap,
            "probability_distance": ck.probability_distance,
        }.get(chk.kind)
        if fn is None:
            continue
        for seg, st in comparisons.items():
            thr, sev = _threshold(chk, seg)
            if seg in judged and sev != "off" and (r := fn(chk, seg, st, thr, sev)) is not None:
                results.append(r)
    results += _feature_checks(con, info, sets, policy, judged, seg_exprs)
    results += _run_level_checks(con, info, spec, sets, policy, judged)

    order = {c.id: i for i, c in enumerate(policy.checks)}
    results.sort(key=lambda r: (order[r.check_id], r.segment != ALL, r.segment, r.feature or ""))
    # one family, one correction
    family = [r for r in results if r.p_value is not None and r.status not in (ck.PENDING, ck.NA)]
    for r, p_adj in zip(family, adjust([r.p_value for r in family], policy.correction), strict=True):  # type: ignore[misc]
        r.p_adjusted = p_adj
    for r in results:
        if r.status in (ck.PENDING, ck.NA):
            continue
        bad = (r.p_adjusted is not None and r.p_adjusted < policy.alpha) if r.p_value is not None else bool(r.exceeded)
        if bad and r.sustained is False:
            bad = False
            r.detail += "; not sustained long enough"
        r.status = (ck.FAIL if r.severity == "critical" else ck.WARN) if bad else ck.PASS

    failing = sorted({r.segment for r in results if r.status == ck.FAIL})
    for s in segments:
        if s["segment"] in failing:
            s["status"] = Status.NO_GO.value
    overall = pstats.get(ALL)
    n_all = int(overall["n_req"]) if overall else 0
    t_min = overall["t_min"] if overall else None
    t_max = overall["t_max"] if overall else None
    span_min = ((t_max - t_min).total_seconds() / 60) if t_min and t_max else 0.0
    reasons: list[str] = []
    pending_segments = [s for s in segments if s["status"] == Status.PENDING.value]
    if failing:
        verdict = Status.NO_GO
        worst_first = sorted(
            (r for r in results if r.status == ck.FAIL),
            key=lambda r: (order[r.check_id], -_excess(r), r.segment),
        )
        reasons += _localise(results, sets)
        for r in worst_first:
            if r.status == ck.FAIL:
                what = f"{r.check_id}{'[' + r.feature + ']' if r.feature else ''}"
                reasons.append(
                    f"{what} failed in {r.segment}: {r.detail}"
                    + (f" (p_adj={r.p_adjusted:.2g})" if r.p_adjusted is not None else "")
                )
    elif n_all == 0:
        verdict = Status.PENDING
        reasons.append("no data: no stored pairs for this candidate yet")
    elif n_all < policy.min_samples or (policy.require_all_segments and pending_segments):
        verdict = Status.PENDING
        for s in pending_segments:
            reasons.append(f"{s['segment']}: {s['n']} pairs, needs {s['needed']} more (min_samples {policy.min_samples})")
    elif span_min < policy.min_duration_minutes:
        verdict = Status.PENDING
        reasons.append(f"data spans {span_min:.1f} min of event time, policy needs {policy.min_duration_minutes:g}")
    else:
        verdict = Status.GO
        reasons.append(f"all {len([r for r in results if r.status == ck.PASS])} checks passed in {len(judged)} segments")
    warnings = [
        f"{r.check_id}{'[' + r.feature + ']' if r.feature else ''} in {r.segment}: {r.detail}"
        for r in results
        if r.status == ck.WARN
    ]

    doc: dict[str, Any] = {
        "schema_version": VERDICT_SCHEMA_VERSION,
        "run_id": info.run_id,
        "candidate": cand,
        "verdict": verdict.value,
        "reasons": reasons,
        "warnings": warnings[:50],
        "failing_segments": failing,
        "data": _data_section(con, info, n_all, t_min, t_max),
        "versions": {
            "candidate_model": spec.get("model_version"),
            "candidate_feature_version": spec.get("feature_version"),
            "baseline": info.config.get("baseline", {}),
            "software": info.meta.get("versions", {}),
            "config_digest": info.meta.get("config_digest"),
        },
        "policy": {
            "digest": policy_digest(policy),
            "min_samples": policy.min_samples,
            "min_duration_minutes": policy.min_duration_minutes,
            "alpha": policy.alpha,
            "correction": policy.correction,
            "require_all_segments": policy.require_all_segments,
        },
        "statistics": {
            "correction": "holm (family-wise error rate)"
            if policy.correction == "holm"
            else "benjamini-hochberg (false discovery rate)",
            "alpha": policy.alpha,
            "tests_in_family": len(family),
            "note": "distance checks (Wasserstein, Jensen-Shannon) are effect-size thresholds outside the family",
        },
        "segments": segments,
        "checks": [r.as_dict() for r in results],
        "comparisons": {seg: st.as_dict() for seg, st in sorted(comparisons.items())},
        "flips": {seg: dict(sorted(v["moves"].items())) for seg, v in sorted(labels.items()) if v["moves"]},
        "examples": _examples(con, sets, policy.examples, cand),
    }
    doc = _stable(doc)
    doc["digest"] = hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()
    doc["generated_at"] = datetime.now(UTC).isoformat()
    return doc


def _localise(results: list[ck.CheckResult], sets: SegmentSets) -> list[str]:
    """Where a failure lives: a field whose values split into failing and passing for a check
    (e.g. daypart=night fails, the other dayparts pass) says where to look first."""
    out = []
    seen: set[tuple[str, str]] = set()
    for r in results:
        if r.status != ck.FAIL or r.segment == ALL or "&" in r.segment or (r.check_id, r.segment) in seen:
            continue
        field = r.segment.split("=", 1)[0]
        same = [
            x
            for x in results
            if x.check_id == r.check_id
            and x.feature == r.feature
            and x.segment.split("=", 1)[0] == field
            and "&" not in x.segment
            and x.segment != ALL
        ]
        bad = sorted({x.segment for x in same if x.status == ck.FAIL})
        good = sorted({x.segment for x in same if x.status == ck.PASS})
        seen.update((r.check_id, b) for b in bad)
        if bad and good:
            what = r.check_id + (f"[{r.feature}]" if r.feature else "")
            out.append(f"{what} is concentrated in {', '.join(bad)}: the other {field} values pass ({', '.join(good)})")
    return out


def _excess(r: ck.CheckResult) -> float:
    """How far past its threshold a failed check is (relative), to list the worst first."""
    if r.value is None or not r.threshold:
        return float(r.value or 0.0)
    return (abs(r.value) - r.threshold) / abs(r.threshold)


def _stable(obj: Any) -> Any:
    """Round floats to 10 significant digits: DuckDB's parallel sums may differ in the last bits
    from one scan to the next, and a re-judged verdict must be byte-identical."""
    if isinstance(obj, float):
        return float(f"{obj:.10g}") if obj == obj else None
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_stable(v) for v in obj]
    return obj


def _feature_checks(
    con: duckdb.DuckDBPyConnection, info: RunInfo, sets: SegmentSets, policy: Policy, judged: set[str], seg_exprs: list[str]
) -> list[ck.CheckResult]:
    kinds = {c.kind for c in policy.checks}
    if not ({"feature_drift", "null_spike", "out_of_range", "new_category"} & kinds) or not (info.numeric or info.categorical):
        return []
    ft = FeatureTables(con, info, sets, policy.reference, seg_exprs)
    stats_ = ft.collect()
    out: list[ck.CheckResult] = []
    for chk in policy.checks:
        for f in stats_:
            if f.segment not in judged:
                continue
            thr, sev = _threshold(chk, f.segment)
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
            elif chk.kind == "null_spike" and f.n_cur:
                share = f.nulls_cur / f.n_cur
                r = _share_check(chk, f, sev, thr, f.nulls_cur, f"null share {share:.2%} (threshold {thr:.2%}; no reference)")
                r.ci = wilson(f.nulls_cur, f.n_cur)
                if f.n_ref:
                    r.p_value = p_diff_above(f.nulls_cur, f.n_cur, f.nulls_ref, f.n_ref, thr)
                    r.detail = f"null share {share:.2%} vs reference {f.nulls_ref / f.n_ref:.2%} (threshold +{thr:.2%})"
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
    r = ck.CheckResult(
        chk.id,
        chk.kind,
        f.segment,
        sev,
        thr,
        f.n_cur,
        value=k / max(f.n_cur, 1),
        feature=f.feature,
        p_value=p_rate_above(k, f.n_cur, thr),
    )
    r.detail = detail
    return r


def _run_level_checks(
    con: duckdb.DuckDBPyConnection,
    info: RunInfo,
    spec: dict[str, Any],
    sets: SegmentSets,
    policy: Policy,
    judged: set[str],
) -> list[ck.CheckResult]:
    out: list[ck.CheckResult] = []
    for chk in policy.checks:
        thr, sev = _threshold(chk, ALL)
        if chk.kind == "dead_letters":
            consumed, dead = con.execute(
                "SELECT (SELECT coalesce(sum(consumed), 0) FROM checkpoints), (SELECT count(*) FROM dead_letters)"
            ).fetchone() or (0, 0)
            by = dict(con.execute("SELECT reason, count(*) FROM dead_letters GROUP BY 1 ORDER BY 2 DESC").fetchall())
            if consumed:
                r = ck.CheckResult(
                    chk.id,
                    chk.kind,
                    ALL,
                    sev,
                    thr,
                    int(consumed),
                    value=dead / consumed,
                    ci=wilson(dead, consumed),
                    p_value=p_rate_above(dead, consumed, thr),
                )
                r.detail = f"{dead} of {consumed} messages dead-lettered {by}"
                r.extra = {"by_reason": by}
                out.append(r)
        elif chk.kind == "version_pairing" and spec.get("feature_version"):
            rows = agg.version_pairs(con, sets, str(spec["feature_version"]))
            for seg, v in rows.items():
                if seg not in judged and seg != ALL:
                    continue
                t, s = _threshold(chk, seg)
                share = v["mismatched"] / v["n"] if v["n"] else 0.0
                r = ck.CheckResult(chk.id, chk.kind, seg, s, t, int(v["n"]), value=share, exceeded=share > t)
                r.detail = (
                    f"{v['mismatched']} requests built by feature pipeline {sorted(v['seen'] or [])} fed a "
                    f"candidate built for {spec['feature_version']}"
                )
                out.append(r)
    return out


def _data_section(con: duckdb.DuckDBPyConnection, info: RunInfo, n: int, t_min: Any, t_max: Any) -> dict[str, Any]:
    offsets = [
        {"source": s, "partition": p, "next_offset": o, "consumed": c, "sampled": k}
        for s, p, o, c, k in con.execute(
            "SELECT source, part, next_offset, consumed, sampled FROM checkpoints ORDER BY 1, 2"
        ).fetchall()
    ]
    dead = con.execute("SELECT count(*) FROM dead_letters").fetchone()
    return {
        "pairs": n,
        "window": {
            "first_event": None if t_min is None else t_min.isoformat(),
            "last_event": None if t_max is None else t_max.isoformat(),
            "configured": info.meta.get("window"),
        },
        "offsets": offsets,
        "consumed": sum(o["consumed"] for o in offsets),
        "sampled": sum(o["sampled"] for o in offsets),
        "dead_letters": int(dead[0]) if dead else 0,
    }


def _examples(con: duckdb.DuckDBPyConnection, sets: SegmentSets, k: int, candidate: str) -> list[dict[str, Any]]:
    """The most different pairs: label flips first, then largest score gaps, then failures."""
    if k == 0:
        return []
    segcols = ", ".join(f"p.{c} AS {c}" for c in sets.columns)
    # pick the k pairs from `pairs` alone (a top-k heap), then fetch only their texts: joining
    # the full tables first would cost seconds on a 10M-pair run
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE top_pairs AS
           SELECT row_number() OVER () AS rank, * FROM (
             SELECT p.request_id, p.source, p.part, p."offset", {segcols}{"," if segcols else ""}
                    p.b_score, p.c_score, p.b_label, p.c_label, p.c_err
             FROM pairs p
             ORDER BY (p.b_label IS DISTINCT FROM p.c_label AND p.c_err IS NULL) DESC,
                      abs(coalesce(p.c_score - p.b_score, 0)) DESC, (p.c_err IS NOT NULL) DESC,
                      p.source, p.part, p."offset"
             LIMIT {int(k)})"""
    )
    offsets = [o for (o,) in con.execute('SELECT DISTINCT "offset" FROM top_pairs').fetchall()] or [-1]
    in_list = ", ".join(str(int(o)) for o in offsets)
    cols = ", ".join(f"t.{c}" for c in sets.columns)
    rows = con.execute(
        f"""SELECT t.request_id, t.source, t.part, t."offset", {cols}{"," if cols else ""}
                  t.b_score, t.c_score, t.b_label, t.c_label, t.c_err, r.model_input,
                  b.output AS b_out, c.output AS c_out, c.error_detail
           FROM top_pairs t
           JOIN (SELECT * FROM requests WHERE "offset" IN ({in_list})) r USING (source, part, "offset")
           LEFT JOIN (SELECT * FROM outputs WHERE variant = $base AND "offset" IN ({in_list})) b
                  ON b.source = t.source AND b.part = t.part AND b."offset" = t."offset"
           LEFT JOIN (SELECT * FROM outputs WHERE variant = $cand AND "offset" IN ({in_list})) c
                  ON c.source = t.source AND c.part = t.part AND c."offset" = t."offset"
           ORDER BY t.rank""",
        {"base": BASELINE, "cand": candidate_variant(candidate)},
    ).fetchall()
    out = []
    for row in rows:
        (rid, src, part, off, *rest) = row
        segs = dict(zip(sets.fields, rest[: len(sets.fields)], strict=True))
        b_score, c_score, b_label, c_label, c_err, model_input, b_out, c_out, err_detail = rest[len(sets.fields) :]
        bo = orjson.loads(b_out) if b_out else None
        co = orjson.loads(c_out) if c_out else None
        out.append(
            {
                "request_id": rid,
                "coordinates": {"source": src, "partition": part, "offset": off},
                "segments": segs,
                "input": orjson.loads(model_input) if model_input else None,
                "baseline": {"score": b_score, "label": b_label, "output": bo},
                "candidate": {
                    "score": c_score,
                    "label": c_label,
                    "output": co,
                    "error": c_err,
                    "error_detail": err_detail,
                },
                "score_diff": None if b_score is None or c_score is None else c_score - b_score,
                "field_diffs": json_diff(bo, co) if co is not None else [],
            }
        )
    return out


def judge_all(con: duckdb.DuckDBPyConnection, policy: Policy) -> list[dict[str, Any]]:
    """A verdict per candidate of the run."""
    info = run_info(con)
    return [judge(con, policy, c["name"]) for c in info.candidates]


__all__ = ["ident", "judge", "judge_all"]
