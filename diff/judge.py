"""Judge a candidate: aggregates → checks → multiple-testing control → verdict.

Verdict rules (docs/decision-rule.md says them for users):
- NO_GO when any critical check is shown worse than its threshold in any judged segment (a
  confident failure counts even while other segments are still short of data);
- else PENDING when the run has fewer pairs than `min_samples`, or spans less than
  `min_duration_minutes` of event time; the verdict says how many more pairs each needs;
- else PENDING while a critical check of the whole run is not yet shown within its threshold,
  or one of a segment that is not rare within the segment margin (diff/decide.py);
- else GO.
Critical tests form one family declared before the first pair (diff/decide.Family), corrected
by weighted Holm (FWER) or e-BH (FDR); warnings are corrected apart. Distance checks without a
test warn only. Latency intervals come from the spread across stretches of wall-clock time."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson

from diff import aggregate as agg
from diff import checks as ck
from diff.decide import Family, decide
from diff.explain import data_section, examples, excess, localise, offered_load
from diff.kept import RATE
from diff.kinds import RUN_LEVEL_KINDS, SEGMENT_KINDS, Evidence
from diff.load import run_info, source_complete
from diff.outputs import compare_outputs
from diff.pairs import Pooling, build_pairs
from diff.quality import feature_checks, run_level_checks, threshold_for
from diff.segments import ALL, SegmentSets
from schemas import VERDICT_SCHEMA_VERSION
from schemas.errors import UnknownCandidate
from schemas.policy import Policy
from schemas.records import Status

_CLOCK = "blocks of the wall-clock time the calls were made (answers recorded in production: their event time)"


def policy_digest(policy: Policy) -> str:
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()


def judge(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    candidate: str | None = None,
    shared: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The verdict document (schemas/verdict.v1.schema.json) for one candidate of the run whose
    tables `con` sees. Deterministic: the same stored pairs and policy give the same document,
    `generated_at` aside. Candidates judged together over the same tables pass one `shared`
    dict: what does not depend on the candidate (the features' statistics) is computed once."""
    info = run_info(con)
    names = [c["name"] for c in info.candidates]
    cand = candidate or names[0]
    if cand not in names:
        raise UnknownCandidate(f"run {info.run_id!r} has no candidate {cand!r} (has {names})")
    spec = next(c for c in info.candidates if c["name"] == cand)
    fields = [f for f in (policy.segments or info.segment_fields) if f in info.segment_fields]
    sets = SegmentSets(fields, info.combinations)
    built = build_pairs(con, info, cand, fields, Pooling(policy.max_segment_values, policy.min_segment_share))

    lat_checks = [c for c in policy.checks if c.kind == "latency"]
    lat_qs = sorted({0.5, 0.95, 0.99, *(c.quantile for c in lat_checks)})
    grid = agg.latency_grid(lat_qs)
    tol = next((c.tolerance for c in policy.checks if c.kind == "score_diff"), 0.05)
    abs_q_checks = [c for c in policy.checks if c.kind == "abs_diff_quantile"]
    abs_grid = agg.latency_grid(sorted({c.quantile for c in abs_q_checks})) if abs_q_checks else []
    # |Δ| quantile checks count the pairs beyond each threshold they use (overrides included)
    abs_thresholds = sorted(
        {t for c in abs_q_checks for t in (c.threshold, *(o.threshold for o in c.overrides)) if t is not None}
    )
    widths = sorted({c.for_minutes for c in policy.checks if c.kind in ("latency", "error_rate") and c.for_minutes > 0})
    (n_quota,) = con.execute("SELECT count(*) FROM pairs WHERE sampled_reason = 'quota'").fetchone() or (0,)
    # the segments whose own quota took samples the rate did not: a quota that the rate samples
    # filled took none, and its segment stays a uniform sample of rate samples only
    quota_segments: set[str] = set()
    if n_quota:
        has_kept = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'quota_kept'").fetchone()
        if has_kept and has_kept[0]:
            quota_segments = {q for (q,) in con.execute("SELECT DISTINCT quota FROM quota_kept").fetchall()}
        else:  # quota samples stored without their hashes: every named quota
            quota_segments = set(info.config.get("sampling", {}).get("quotas", {}))

    def by_sampling(aggregate: Any) -> dict[str, Any]:
        """Per-segment minimum quotas oversample rare segments on purpose: a segment that mixes
        them with other traffic is judged on rate samples only (unbiased), a quota segment and
        its sub-segments on all their samples (that is what the quota is for). `aggregate(where,
        kept)` may keep its partials between looks (`kept`) when `where` holds rate samples only."""
        if not n_quota:
            return dict(aggregate("TRUE", built.kept))
        out = dict(aggregate(RATE, built.kept))
        for seg, value in aggregate("TRUE", None).items():
            if any(part in quota_segments for part in seg.split("&")):
                out[seg] = value
        return out

    needs = set().union(*(SEGMENT_KINDS[c.kind].needs for c in policy.checks if c.kind in SEGMENT_KINDS))
    pstats = by_sampling(lambda w, kept: agg.pair_stats(con, sets, tol, grid, w, abs_grid, abs_thresholds, kept))
    windows = (
        {wd: by_sampling(lambda w, kept, wd=wd: agg.per_window(con, sets, lat_qs, wd, w, kept)) for wd in widths}
        if "windows" in needs
        else {}
    )
    dists = by_sampling(lambda w, _: agg.score_distributions(con, sets, w)) if "distributions" in needs else {}
    labels = by_sampling(lambda w, _: agg.label_counts(con, sets, w))  # the verdict's flips table reads them too
    blocks = by_sampling(lambda w, kept: agg.latency_blocks(con, sets, lat_qs, w, kept)) if "latency_blocks" in needs else {}
    baseline_model = info.config.get("baseline", {}).get("model") or {}
    comparisons = compare_outputs(
        con,
        sets,
        cand,
        info.config.get("output", {}),
        candidate_spec=spec.get("output"),
        baseline_spec=baseline_model.get("output"),
    )

    # latency is compared over wall-clock blocks; in a replay an event-time segment (the hour
    # bucket) is a stretch of wall-clock time with its own load, so it gets no latency verdict
    live = info.config.get("source", {}).get("kind") == "kafka-live"
    hour_bucket = (info.config.get("segments", {}).get("hour_buckets") or {}).get("name")
    event_time_fields = {hour_bucket} if hour_bucket and not live else set()

    def evidence(seg: str) -> Evidence:
        return Evidence(
            segment=seg,
            pairs=pstats.get(seg, {}),
            windows={wd: by_seg[seg] for wd, by_seg in windows.items() if seg in by_seg},
            distribution=dists.get(seg),
            labels=labels.get(seg),
            blocks=blocks.get(seg),
            comparison=comparisons.get(seg),
            event_time_segment=seg != ALL and any(p.split("=", 1)[0] in event_time_fields for p in seg.split("&")),
            lat_quantiles=lat_qs,
            lat_grid=grid,
            abs_grid=abs_grid,
            abs_thresholds=abs_thresholds,
        )

    segments: list[dict[str, Any]] = []
    output: dict[str, Any] = info.config.get("output", {})
    judged: set[str] = set()
    n_run = int(pstats[ALL]["n_req"]) if ALL in pstats else 0
    complete = source_complete(con)

    def exhausted(seg: str, n: int) -> bool:
        """No more pairs will come, and every request the segment had was stored: a quota of at
        least min_samples (its own or one of its parts') never filled."""
        if not complete or seg == ALL or n >= policy.min_samples:
            return False
        for part in seg.split("&"):
            k = info.quota_k(part)
            if k is not None and k >= policy.min_samples and part in pstats and int(pstats[part]["n_req"]) < k:
                return True
        return False

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
                # too small a share of the traffic to wait for: judged once it has min_samples,
                # never holding the verdict PENDING (its pairs count in `all` and in its fields' other segments)
                "rare": seg != ALL and n < policy.min_segment_share * n_run,
                # all of its traffic is in, and it is short of min_samples: it cannot hold the
                # verdict either (its pairs count in `all` and in its fields' other segments)
                "exhausted": exhausted(seg, n),
            }
        )
        if ok:
            judged.add(seg)

    results: list[ck.CheckResult] = []
    for chk in policy.checks:
        kind = SEGMENT_KINDS.get(chk.kind)
        over = pstats if kind is None or kind.over == "pairs" else comparisons
        for seg in over:
            thr, sev = threshold_for(chk, seg)
            if sev == "off":
                continue
            if seg not in judged:
                # a short segment's pair and feature checks wait for pairs; whole-run ones do not
                if (kind.over == "pairs") if kind is not None else chk.kind not in RUN_LEVEL_KINDS:
                    n_seg = int(pstats[seg]["n_req"])
                    detail = f"{n_seg} of {policy.min_samples} pairs needed"
                    results.append(ck.CheckResult(chk.id, chk.kind, seg, sev, thr, n_seg, status=ck.PENDING, detail=detail))
                continue
            if kind is None:
                continue
            if (r := kind.evaluate(chk, evidence(seg), thr, sev)) is not None:
                results.append(r)
            elif seg == ALL and sev == "critical" and kind.expects_evidence(output):
                # missing evidence is never a pass: the whole run gave this check nothing to test
                detail = f"no {kind.evidence} in the stored pairs"
                results.append(ck.CheckResult(chk.id, chk.kind, seg, sev, thr, 0, status=ck.NA, detail=detail))
    results += feature_checks(con, info, sets, policy, judged, built.seg_exprs, shared)
    results += run_level_checks(con, info, spec, sets, policy, judged, built.duplicates)

    order = {c.id: i for i, c in enumerate(policy.checks)}
    results.sort(key=lambda r: (order[r.check_id], r.segment != ALL, r.segment, r.feature or ""))
    family = decide(results, policy, n_run, declared_family(policy, sets, output, len(names)))

    failing = sorted({r.segment for r in results if r.status == ck.FAIL})
    rare = {s["segment"] for s in segments if s["rare"]}
    # critical checks neither shown worse nor shown within hold the verdict, in `all` and in
    # every segment but the rare ones (there, within the segment margin)
    undecided = [r for r in results if r.status == ck.UNDECIDED and r.segment not in rare]
    for s in segments:
        if s["segment"] in failing:
            s["status"] = Status.NO_GO.value
        elif any(r.segment == s["segment"] for r in undecided):
            s["status"] = Status.PENDING.value
    overall = pstats.get(ALL)
    n_all = int(overall["n_req"]) if overall else 0
    t_min = overall["t_min"] if overall else None
    t_max = overall["t_max"] if overall else None
    span_min = ((t_max - t_min).total_seconds() / 60) if t_min and t_max else 0.0
    reasons: list[str] = []
    pending_segments = [s for s in segments if s["n"] < policy.min_samples and not s["rare"] and not s["exhausted"]]
    # a critical check whose evidence is missing is never a pass: it holds the verdict
    not_assessed = [r for r in results if r.status == ck.NA and r.severity == "critical"]
    if failing:
        verdict = Status.NO_GO
        worst_first = sorted(
            (r for r in results if r.status == ck.FAIL),
            key=lambda r: (order[r.check_id], -excess(r), r.segment),
        )
        reasons += localise(results, sets)
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
        if complete and pending_segments and not info.per_segment_k:
            reasons.append(
                'the run is complete: with sampling.min_per_segment = "policy" each segment is sampled up to min_samples'
            )
    elif span_min < policy.min_duration_minutes:
        verdict = Status.PENDING
        reasons.append(f"data spans {span_min:.1f} min of event time, policy needs {policy.min_duration_minutes:g}")
    elif not_assessed:
        verdict = Status.PENDING
        reasons += [f"{r.check_id} not assessable in {r.segment}: {r.detail}" for r in not_assessed]
    elif undecided:
        verdict = Status.PENDING
        for r in sorted(undecided, key=lambda r: (r.pairs_needed is not None, -(r.pairs_needed or 0)))[:10]:
            what = f"{r.check_id}{'[' + r.feature + ']' if r.feature else ''}"
            reasons.append(f"{what} in {r.segment}: {r.detail}")
        if len(undecided) > 10:
            reasons.append(f"... and {len(undecided) - 10} more checks not yet shown within their thresholds")
    else:
        verdict = Status.GO
        reasons.append(f"all {len([r for r in results if r.status == ck.PASS])} checks passed in {len(judged)} segments")
    reasons += [
        f"{s['segment']}: the run's whole traffic held {s['n']} requests of it, fewer than min_samples "
        f"{policy.min_samples}: judged within `all` and its fields' other segments, not on its own"
        for s in segments
        if s["exhausted"]
    ]
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
        "data": data_section(con, info, t_min, t_max),
        "load": offered_load(con, info, cand),
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
            "prove_in_segments": policy.prove_in_segments,
            "segment_margin": policy.segment_margin,
            "latency_min_span_minutes": policy.latency_min_span_minutes,
            "decision": policy.decision,
            "anytime_horizon": policy.anytime_horizon,
            "min_segment_share": policy.min_segment_share,
            "checks": [
                {"id": c.id, "kind": c.kind, "severity": c.severity, "threshold": c.threshold, "require_proof": c.require_proof}
                for c in policy.checks
            ],
        },
        "statistics": {
            "correction": "holm (family-wise error rate)"
            if policy.correction == "holm"
            else "benjamini-hochberg (false discovery rate)",
            "alpha": policy.alpha,
            "tests_in_family": len(family),
            "latency_axis": (
                _CLOCK
                if not hour_bucket
                else f"{_CLOCK}; the event-time segments ({hour_bucket}) too (live: event time is wall-clock time)"
                if live
                else f"{_CLOCK}; the event-time segments ({hour_bucket}) of a replay are not judged on latency"
            ),
            "decision": "anytime-valid (exact Bernoulli e-processes for rates, Gaussian-mixture ones for means "
            "and latency ratios): valid however often the run is judged, and the first GO or NO_GO is final; "
            "a critical check passes only once shown within its threshold (in a segment, within "
            f"{policy.segment_margin:g} times the threshold's distance from the ideal)"
            if policy.decision == "anytime"
            else "fixed-sample tests read at this look; a check passes unless shown worse",
            "note": "the critical tests form one family declared from the first look (half of alpha to the whole "
            "run's, half to the segments' slots, split over the run's candidates); warnings are corrected apart; "
            "distance checks (Wasserstein, Jensen-Shannon) are effect-size thresholds",
        },
        "segments": segments,
        "pooled_segment_values": built.pooled,
        "checks": [r.as_dict() for r in results],
        "comparisons": {seg: st.as_dict() for seg, st in sorted(comparisons.items())},
        "flips": {seg: dict(sorted(v["moves"].items())) for seg, v in sorted(labels.items()) if v["moves"]},
        "examples": examples(con, sets, policy.examples, cand),
    }
    doc = _stable(doc)
    doc["digest"] = hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()
    doc["generated_at"] = datetime.now(UTC).isoformat()
    return doc


def declared_family(policy: Policy, sets: SegmentSets, output: dict[str, Any], candidates: int) -> Family:
    """The tests that may be corrected together, from the policy and the run's config alone:
    every grouping set of segments, the checks with a test that this output kind can feed, and
    the run's candidates."""
    tested = []
    for c in policy.checks:
        kind = SEGMENT_KINDS.get(c.kind)
        if c.kind in UNTESTED_KINDS:
            continue
        if kind is not None and kind.over == "pairs" and c.kind != "shadow_load" and not kind.expects_evidence(output):
            continue
        if kind is not None and kind.over == "comparisons" and output.get("kind", "score") in ("score", "label"):
            continue
        tested.append(c.id)
    return Family.declared(sets.sets, policy, tested, candidates)


# effect-size rules without a test of their own: they take no share of alpha
UNTESTED_KINDS = frozenset({"prediction_drift", "version_pairing"})


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


def judge_all(con: duckdb.DuckDBPyConnection, policy: Policy) -> list[dict[str, Any]]:
    """A verdict per candidate of the run."""
    info = run_info(con)
    shared: dict[str, Any] = {}
    return [judge(con, policy, c["name"], shared) for c in info.candidates]


__all__ = ["judge", "judge_all", "policy_digest"]
