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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import duckdb
import orjson

from shadowdiff.diff import aggregate as agg
from shadowdiff.diff import checks as ck
from shadowdiff.diff import signed
from shadowdiff.diff.aggregate import PairStats
from shadowdiff.diff.decide import Family, decide
from shadowdiff.diff.explain import data_section, examples, excess, localise, offered_load
from shadowdiff.diff.kept import RATE
from shadowdiff.diff.kinds import RUN_LEVEL_KINDS, SEGMENT_KINDS, Evidence
from shadowdiff.diff.load import RunInfo, run_info, source_complete
from shadowdiff.diff.outcome_aggregates import outcome_stats
from shadowdiff.diff.outcome_checks import say_better
from shadowdiff.diff.outcomes import has_outcomes, no_outcomes, outcome_pace, outcome_sequence, outcome_summary
from shadowdiff.diff.outputs import compare_outputs
from shadowdiff.diff.pairs import BuiltPairs, Pooling, build_pairs
from shadowdiff.diff.quality import feature_checks, run_level_checks, threshold_for
from shadowdiff.diff.segments import ALL, SegmentSets
from shadowdiff.schemas import VERDICT_SCHEMA_VERSION
from shadowdiff.schemas.config import ModelSpec, OutputSpec
from shadowdiff.schemas.errors import UnknownCandidate
from shadowdiff.schemas.policy import Policy
from shadowdiff.schemas.records import Status
from shadowdiff.schemas.verdict import Verdict, emitted

_CLOCK = "blocks of the wall-clock time the calls were made (answers recorded in production: their event time)"


def policy_digest(policy: Policy) -> str:
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()


def judge(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    candidate: str | None = None,
    shared: dict[str, Any] | None = None,
) -> Verdict:
    """The verdict document (schemas/verdict.v1.schema.json) for one candidate of the run whose
    tables `con` sees. Deterministic: the same stored pairs and policy give the same document,
    `generated_at` aside. Candidates judged together over the same tables pass one `shared`
    dict: what does not depend on the candidate (the features' statistics) is computed once.

    Four steps: gather the evidence (pairs and their aggregates per segment), run the checks,
    decide (diff/decide.py), and write the verdict with its reasons."""
    info = run_info(con)
    names = [c.name for c in info.candidates]
    cand = candidate or names[0]
    if cand not in names:
        raise UnknownCandidate(f"run {info.run_id!r} has no candidate {cand!r} (has {names})")
    ev = gather_evidence(con, policy, info, cand)
    complete = source_complete(con)
    segments, judged = segment_status(ev, policy, complete)
    results = run_checks(con, ev, policy, judged, shared)
    family = decide(results, policy, ev.n_run, declared_family(policy, ev.sets, ev.output, len(names)))
    say_better(results)
    verdict, reasons = verdict_and_reasons(ev, policy, results, segments, complete)
    warnings = [f"{_what(r)} in {r.segment}: {r.detail}" for r in results if r.status == ck.WARN]
    doc: dict[str, Any] = {
        "schema_version": VERDICT_SCHEMA_VERSION,
        "run_id": info.run_id,
        "candidate": cand,
        "verdict": verdict.value,
        "reasons": reasons,
        "warnings": warnings[:50],
        "failing_segments": sorted({r.segment for r in results if r.status == ck.FAIL}),
        "data": data_section(con, info, ev.t_min, ev.t_max, ev.built.kept),
        "load": offered_load(con, info, cand),
        "versions": {
            "candidate_model": ev.spec.model_version,
            "candidate_feature_version": ev.spec.feature_version,
            "baseline": info.run.baseline.model_dump(mode="json"),
            "software": info.meta.get("versions", {}),
            "config_digest": info.meta.get("config_digest"),
        },
        "policy": policy_summary(policy),
        "statistics": _statistics(policy, len(family), ev),
        "segments": segments,
        "pooled_segment_values": ev.built.pooled,
        "checks": [r.as_dict() for r in results],
        "comparisons": {seg: st.as_dict() for seg, st in sorted(ev.comparisons.items())},
        "flips": {seg: dict(sorted(v["moves"].items())) for seg, v in sorted(ev.labels.items()) if v["moves"]},
        "examples": examples(con, ev.sets, policy.examples, cand, ev.built.kept),
    }
    if ev.outcomes is not None:
        doc["outcomes"] = outcome_summary(con, ev.outcomes)
        if verdict == Status.PENDING and any(r.unit == "outcomes" and r.status == ck.UNDECIDED for r in results):
            doc["reasons"].append(outcome_pace(doc["outcomes"]))
    doc = stable_numbers(doc)
    doc["digest"] = hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()
    doc["generated_at"] = datetime.now(UTC).isoformat()
    return emitted(doc)


@dataclass
class RunEvidence:
    """What the checks of one candidate read: the run's pairs and their aggregates per segment."""

    info: RunInfo
    cand: str
    spec: ModelSpec
    sets: SegmentSets
    built: BuiltPairs
    pstats: dict[str, PairStats]
    windows: dict[float, dict[str, Any]]
    dists: dict[str, Any]
    labels: dict[str, Any]
    blocks: dict[str, Any]
    comparisons: dict[str, Any]
    lat_qs: list[float]
    grid: list[float]
    abs_grid: list[float]
    abs_thresholds: list[float]
    live: bool
    hour_bucket: str | None
    outcomes: dict[str, Any] | None = None  # per segment (diff/outcome_aggregates.py), when outcomes are judged
    min_outcomes: int = 0

    @property
    def output(self) -> OutputSpec:
        return self.info.run.output

    @property
    def n_run(self) -> int:
        return int(self.pstats[ALL]["n_req"]) if ALL in self.pstats else 0

    @property
    def t_min(self) -> Any:
        return self.pstats[ALL]["t_min"] if ALL in self.pstats else None

    @property
    def t_max(self) -> Any:
        return self.pstats[ALL]["t_max"] if ALL in self.pstats else None

    def for_segment(self, seg: str) -> Evidence:
        # latency is compared over wall-clock blocks; in a replay an event-time segment (the hour
        # bucket) is a stretch of wall-clock time with its own load, so it gets no latency verdict
        event_time_fields = {self.hour_bucket} if self.hour_bucket and not self.live else set()
        return Evidence(
            segment=seg,
            pairs=self.pstats.get(seg) or agg.no_pairs(seg),
            windows={wd: by_seg[seg] for wd, by_seg in self.windows.items() if seg in by_seg},
            distribution=self.dists.get(seg),
            labels=self.labels.get(seg),
            blocks=self.blocks.get(seg),
            comparison=self.comparisons.get(seg),
            event_time_segment=seg != ALL and any(p.split("=", 1)[0] in event_time_fields for p in seg.split("&")),
            lat_quantiles=self.lat_qs,
            lat_grid=self.grid,
            abs_grid=self.abs_grid,
            abs_thresholds=self.abs_thresholds,
            outcomes=None if self.outcomes is None else self.outcomes.get(seg),
            min_outcomes=self.min_outcomes,
        )


def gather_evidence(con: duckdb.DuckDBPyConnection, policy: Policy, info: RunInfo, cand: str) -> RunEvidence:
    """Build the candidate's pairs and every aggregate the policy's checks need."""
    spec = info.candidate(cand)
    fields = [f for f in (policy.segments or info.segment_fields) if f in info.segment_fields]
    sets = SegmentSets(fields, info.combinations)
    built = build_pairs(con, info, cand, fields, Pooling(policy.max_segment_values, policy.min_segment_share))
    lat_qs = sorted({0.5, 0.95, 0.99, *(c.quantile for c in policy.checks if c.kind == "latency")})
    grid = agg.latency_grid(lat_qs)
    tol = next((c.tolerance for c in policy.checks if c.kind == "score_diff"), 0.05)
    abs_q_checks = [c for c in policy.checks if c.kind == "abs_diff_quantile"]
    abs_grid = agg.latency_grid(sorted({c.quantile for c in abs_q_checks})) if abs_q_checks else []
    # |Δ| quantile checks count the pairs beyond each threshold they use (overrides included)
    abs_thresholds = sorted(
        {t for c in abs_q_checks for t in (c.threshold, *(o.threshold for o in c.overrides)) if t is not None}
    )
    widths = sorted({c.for_minutes for c in policy.checks if c.kind in ("latency", "error_rate") and c.for_minutes > 0})
    by_sampling = _by_sampling(con, info, built)
    needs = set().union(*(SEGMENT_KINDS[c.kind].needs for c in policy.checks if c.kind in SEGMENT_KINDS))
    baseline_model = info.run.baseline.model
    # outcomes are joined when the policy tests them, or when outcome workers exported some
    # (the verdict then reports them, and the report draws them)
    with_outcomes = "outcomes" in needs or has_outcomes(con)
    if with_outcomes and not has_outcomes(con):
        no_outcomes(con)  # judged without the run folder (a bare connection): none arrived
    positive = info.run.outcomes.positive_label if info.run.outcomes is not None else "1"
    outcome_seq = outcome_sequence(con) if with_outcomes else None
    return RunEvidence(
        info=info,
        cand=cand,
        spec=spec,
        sets=sets,
        built=built,
        pstats=by_sampling(lambda w, kept: agg.pair_stats(con, sets, tol, grid, w, abs_grid, abs_thresholds, kept)),
        windows={wd: by_sampling(partial(_per_window, con, sets, lat_qs, wd)) for wd in widths} if "windows" in needs else {},
        dists=by_sampling(lambda w, kept: signed.score_distributions(con, sets, w, kept)) if "distributions" in needs else {},
        labels=by_sampling(lambda w, kept: signed.label_counts(con, sets, w, kept)),  # the verdict's flips table reads them too
        blocks=by_sampling(lambda w, kept: agg.latency_blocks(con, sets, lat_qs, w, kept)) if "latency_blocks" in needs else {},
        comparisons=compare_outputs(
            con,
            sets,
            cand,
            info.run.output,
            candidate_spec=spec.output,
            baseline_spec=baseline_model.output if baseline_model is not None else None,
        ),
        lat_qs=lat_qs,
        grid=grid,
        abs_grid=abs_grid,
        abs_thresholds=abs_thresholds,
        live=info.run.source.kind == "kafka-live",
        hour_bucket=info.run.segments.hour_buckets.name if info.run.segments.hour_buckets else None,
        outcomes=by_sampling(lambda w, kept: outcome_stats(con, sets, positive, w, kept, policy.examples, outcome_seq))
        if with_outcomes
        else None,
        min_outcomes=policy.min_outcomes,
    )


Aggregate = Callable[[str, Any], dict[str, Any]]


def _per_window(
    con: duckdb.DuckDBPyConnection, sets: SegmentSets, lat_qs: list[float], width: float, where: str, kept: Any
) -> dict[str, Any]:
    return dict(agg.per_window(con, sets, lat_qs, width, where, kept))


def _by_sampling(con: duckdb.DuckDBPyConnection, info: RunInfo, built: BuiltPairs) -> Callable[[Aggregate], dict[str, Any]]:
    """Per-segment minimum quotas oversample small segments on purpose: a segment that mixes
    them with other traffic is judged on rate samples only (unbiased), a segment whose own quota
    took samples, and its sub-segments, on all their samples (that is what the quota is for).
    `aggregate(where, kept)` may keep its partials between looks (`kept`) when `where` holds
    rate samples only."""
    (n_quota,) = con.execute("SELECT count(*) FROM pairs WHERE sampled_reason = 'quota'").fetchone() or (0,)
    # a quota that the rate samples filled took none, and its segment stays a uniform sample
    quota_segments: set[str] = set()
    if n_quota:
        has_kept = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'quota_kept'").fetchone()
        if has_kept and has_kept[0]:
            quota_segments = {q for (q,) in con.execute("SELECT DISTINCT quota FROM quota_kept").fetchall()}
        else:  # quota samples stored without their hashes: every named quota
            quota_segments = set(info.run.sampling.quotas)

    def by_sampling(aggregate: Aggregate) -> dict[str, Any]:
        if not n_quota:
            return dict(aggregate("TRUE", built.kept))
        out = dict(aggregate(RATE, built.kept))
        for seg, value in aggregate("TRUE", None).items():
            if any(part in quota_segments for part in seg.split("&")):
                out[seg] = value
        return out

    return by_sampling


def segment_status(ev: RunEvidence, policy: Policy, complete: bool) -> tuple[list[dict[str, Any]], set[str]]:
    """Each segment's pairs and standing before its checks, and the segments with min_samples."""

    def exhausted(seg: str, n: int) -> bool:
        """No more pairs will come, and every request the segment had was stored: a quota of at
        least min_samples (its own or one of its parts') never filled."""
        if not complete or seg == ALL or n >= policy.min_samples:
            return False
        for part in seg.split("&"):
            k = ev.info.quota_k(part)
            if k is not None and k >= policy.min_samples and part in ev.pstats and int(ev.pstats[part]["n_req"]) < k:
                return True
        return False

    segments: list[dict[str, Any]] = []
    judged: set[str] = set()
    for seg in sorted(ev.pstats, key=lambda s: (s != ALL, s)):
        n = int(ev.pstats[seg]["n_req"])
        ok = n >= policy.min_samples
        segments.append(
            {
                "segment": seg,
                "n": n,
                "n_pairs": int(ev.pstats[seg]["n_pair"]),
                "status": Status.GO.value if ok else Status.PENDING.value,
                "needed": max(0, policy.min_samples - n),
                # too small a share of the traffic to wait for: judged once it has min_samples,
                # never holding the verdict PENDING (its pairs count in `all` and in its fields' other segments)
                "rare": seg != ALL and n < policy.min_segment_share * ev.n_run,
                # all of its traffic is in, and it is short of min_samples: it cannot hold the
                # verdict either (its pairs count in `all` and in its fields' other segments)
                "exhausted": exhausted(seg, n),
            }
        )
        if ok:
            judged.add(seg)
    return segments, judged


def run_checks(
    con: duckdb.DuckDBPyConnection, ev: RunEvidence, policy: Policy, judged: set[str], shared: dict[str, Any] | None
) -> list[ck.CheckResult]:
    """Every check of the policy in every segment, in the policy's order; a short segment's
    pair and feature checks wait for pairs (PENDING), whole-run ones do not."""
    results: list[ck.CheckResult] = []
    for chk in policy.checks:
        kind = SEGMENT_KINDS.get(chk.kind)
        over = ev.pstats if kind is None or kind.over == "pairs" else ev.comparisons
        for seg in over:
            thr, sev = threshold_for(chk, seg)
            if sev == "off":
                continue
            if seg not in judged:
                if (kind.over == "pairs") if kind is not None else chk.kind not in RUN_LEVEL_KINDS:
                    n_seg = int(ev.pstats[seg]["n_req"])
                    detail = f"{n_seg} of {policy.min_samples} pairs needed"
                    results.append(ck.CheckResult(chk.id, chk.kind, seg, sev, thr, n_seg, status=ck.PENDING, detail=detail))
                continue
            if kind is None:
                continue
            if (r := kind.evaluate(chk, ev.for_segment(seg), thr, sev)) is not None:
                results.append(r)
            elif seg == ALL and sev == "critical" and kind.expects_evidence(ev.output):
                # missing evidence is never a pass: the whole run gave this check nothing to test
                detail = f"no {kind.evidence} in the stored pairs"
                results.append(ck.CheckResult(chk.id, chk.kind, seg, sev, thr, 0, status=ck.NA, detail=detail))
    results += feature_checks(con, ev.info, ev.sets, policy, judged, ev.built.seg_exprs, shared)
    results += run_level_checks(con, ev.spec, ev.sets, policy, judged, ev.built.duplicates)
    order = {c.id: i for i, c in enumerate(policy.checks)}
    results.sort(key=lambda r: (order[r.check_id], r.segment != ALL, r.segment, r.feature or ""))
    return results


def _what(r: ck.CheckResult) -> str:
    return f"{r.check_id}{'[' + r.feature + ']' if r.feature else ''}"


def mark_segments(results: list[ck.CheckResult], segments: list[dict[str, Any]]) -> tuple[set[str], list[ck.CheckResult]]:
    """Each segment's final status from its decided checks; returns the failing segments and the
    undecided checks that hold the verdict."""
    failing = {r.segment for r in results if r.status == ck.FAIL}
    rare = {s["segment"] for s in segments if s["rare"]}
    # critical checks neither shown worse nor shown within hold the verdict, in `all` and in
    # every segment but the rare ones (there, within the segment margin)
    undecided = [r for r in results if r.status == ck.UNDECIDED and r.segment not in rare]
    for s in segments:
        if s["segment"] in failing:
            s["status"] = Status.NO_GO.value
        elif any(r.segment == s["segment"] for r in undecided):
            s["status"] = Status.PENDING.value
    return failing, undecided


def verdict_and_reasons(
    ev: RunEvidence, policy: Policy, results: list[ck.CheckResult], segments: list[dict[str, Any]], complete: bool
) -> tuple[Status, list[str]]:
    """The verdict of decided results, and its reasons: what failed, or what it waits for. Sets
    each segment's final status."""
    failing, undecided = mark_segments(results, segments)
    span_min = ((ev.t_max - ev.t_min).total_seconds() / 60) if ev.t_min and ev.t_max else 0.0
    pending_segments = [s for s in segments if s["n"] < policy.min_samples and not s["rare"] and not s["exhausted"]]
    # a critical check whose evidence is missing is never a pass: it holds the verdict
    not_assessed = [r for r in results if r.status == ck.NA and r.severity == "critical"]
    reasons: list[str] = []
    if failing:
        verdict = Status.NO_GO
        order = {c.id: i for i, c in enumerate(policy.checks)}
        reasons += localise(results, ev.sets)
        for r in sorted((r for r in results if r.status == ck.FAIL), key=lambda r: (order[r.check_id], -excess(r), r.segment)):
            p_adj = f" (p_adj={r.p_adjusted:.2g})" if r.p_adjusted is not None else ""
            reasons.append(f"{_what(r)} failed in {r.segment}: {r.detail}{p_adj}")
    elif ev.n_run == 0:
        verdict = Status.PENDING
        reasons.append("no data: no stored pairs for this candidate yet")
    elif ev.n_run < policy.min_samples or (policy.require_all_segments and pending_segments):
        verdict = Status.PENDING
        for s in pending_segments:
            reasons.append(f"{s['segment']}: {s['n']} pairs, needs {s['needed']} more (min_samples {policy.min_samples})")
        if complete and pending_segments and not ev.info.per_segment_k:
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
            reasons.append(f"{_what(r)} in {r.segment}: {r.detail}")
        if len(undecided) > 10:
            reasons.append(f"... and {len(undecided) - 10} more checks not yet shown within their thresholds")
    else:
        verdict = Status.GO
        passed = len([r for r in results if r.status == ck.PASS])
        reasons.append(f"all {passed} checks passed in {len([s for s in segments if s['n'] >= policy.min_samples])} segments")
    reasons += [
        f"{s['segment']}: the run's whole traffic held {s['n']} requests of it, fewer than min_samples "
        f"{policy.min_samples}: judged within `all` and its fields' other segments, not on its own"
        for s in segments
        if s["exhausted"]
    ]
    return verdict, reasons


def policy_summary(policy: Policy) -> dict[str, Any]:
    """The policy the verdict was judged under (schemas/verdict.PolicySummary)."""
    return {
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
        "min_outcomes": policy.min_outcomes,
        "min_segment_share": policy.min_segment_share,
        "checks": [
            {"id": c.id, "kind": c.kind, "severity": c.severity, "threshold": c.threshold, "require_proof": c.require_proof}
            for c in policy.checks
        ],
    }


def _statistics(policy: Policy, tests_in_family: int, ev: RunEvidence) -> dict[str, Any]:
    hour_bucket = ev.hour_bucket
    return {
        "correction": "holm (family-wise error rate)"
        if policy.correction == "holm"
        else "benjamini-hochberg (false discovery rate)",
        "alpha": policy.alpha,
        "tests_in_family": tests_in_family,
        "latency_axis": (
            _CLOCK
            if not hour_bucket
            else f"{_CLOCK}; the event-time segments ({hour_bucket}) too (live: event time is wall-clock time)"
            if ev.live
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
    }


def declared_family(policy: Policy, sets: SegmentSets, output: OutputSpec, candidates: int) -> Family:
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
        if kind is not None and kind.over == "comparisons" and output.kind in ("score", "label"):
            continue
        tested.append(c.id)
    return Family.declared(sets.sets, policy, tested, candidates)


# effect-size rules without a test of their own: they take no share of alpha
UNTESTED_KINDS = frozenset({"prediction_drift", "version_pairing"})


def stable_numbers(obj: Any) -> Any:
    """Round floats to 10 significant digits: DuckDB's parallel sums may differ in the last bits
    from one scan to the next, and a re-judged verdict must be byte-identical."""
    if isinstance(obj, float):
        return float(f"{obj:.10g}") if obj == obj else None
    if isinstance(obj, dict):
        return {k: stable_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [stable_numbers(v) for v in obj]
    return obj


def judge_all(con: duckdb.DuckDBPyConnection, policy: Policy) -> list[Verdict]:
    """A verdict per candidate of the run."""
    info = run_info(con)
    shared: dict[str, Any] = {}
    return [judge(con, policy, c.name, shared) for c in info.candidates]


__all__ = ["judge", "judge_all", "policy_digest"]
