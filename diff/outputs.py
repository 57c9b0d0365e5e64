"""Model-aware comparisons of whole outputs, per segment, on a deterministic sample of pairs:
field-level differences of structured (JSON) outputs the Diffy way, top-k overlap and rank
correlation of rankings, Jensen-Shannon distance of class probabilities. The outputs are JSON
text, so these run in Python on at most `max_pairs` pairs (a sample of 20k pins a share to
about ±0.7 points)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson

from shadowdiff.diff.comparators import json_diff, overlap_at_k, probability_distance, rank_correlation
from shadowdiff.diff.segments import ALL, SegmentSets
from shadowdiff.schemas.config import OutputSpec
from shadowdiff.schemas.paths import lookup
from shadowdiff.schemas.records import BASELINE, BASELINE_REPEAT, candidate_variant


@dataclass
class OutputStats:
    n: int = 0
    with_diffs: int = 0  # pairs with at least one counted field difference
    noise_n: int = 0
    noise_with_diffs: int = 0
    fields: Counter[str] = field(default_factory=Counter)  # "path (kind)" -> pairs
    overlap_sum: float = 0.0
    overlap_sq: float = 0.0
    overlap_n: int = 0
    tau_sum: float = 0.0
    tau_n: int = 0
    js_sum: float = 0.0
    js_sq: float = 0.0
    js_n: int = 0

    def add_json(self, b: Any, c: Any, repeat: Any, ignore: set[str]) -> None:
        """Field differences of a pair of JSON answers (and of the baseline with its repeat)."""
        diffs = _counted(json_diff(b, c), ignore)
        self.with_diffs += bool(diffs)
        for d in {f"{d['path']} ({d['kind']})" for d in diffs}:
            self.fields[d] += 1
        if repeat is not None:
            self.noise_n += 1
            self.noise_with_diffs += bool(_counted(json_diff(b, repeat), ignore))

    def add_ranking(self, rb: Any, rc: Any, k: int) -> None:
        if isinstance(rb, list) and isinstance(rc, list):
            ov = overlap_at_k(rb, rc, k)
            self.overlap_sum += ov
            self.overlap_sq += ov * ov
            self.overlap_n += 1
            tau = rank_correlation(rb, rc)
            if not math.isnan(tau):
                self.tau_sum += tau
                self.tau_n += 1

    def add_probabilities(self, pb: list[float] | None, pc: list[float] | None) -> None:
        if pb and pc:
            js = probability_distance(pb, pc)
            if not math.isnan(js):
                self.js_sum += js
                self.js_sq += js * js
                self.js_n += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "pairs_compared": self.n,
            "share_with_field_diffs": self.with_diffs / self.n if self.n else None,
            "noise_share_with_field_diffs": self.noise_with_diffs / self.noise_n if self.noise_n else None,
            "top_field_diffs": dict(self.fields.most_common(10)),
            "mean_overlap_at_k": self.overlap_sum / self.overlap_n if self.overlap_n else None,
            "mean_rank_correlation": self.tau_sum / self.tau_n if self.tau_n else None,
            "mean_js_distance": self.js_sum / self.js_n if self.js_n else None,
        }


def _probs(v: Any) -> list[float] | None:
    if isinstance(v, dict):
        v = [v[k] for k in sorted(v)]
    if isinstance(v, list) and v and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
        return [float(x) for x in v]
    return None


def _counted(diffs: list[dict[str, Any]], ignore: set[str]) -> list[dict[str, Any]]:
    return [d for d in diffs if d["path"].split("[")[0] not in ignore]


def _sampled_answers(con: duckdb.DuckDBPyConnection, sets: SegmentSets, candidate: str, max_pairs: int) -> list[Any]:
    """Segment values and the baseline's, the candidate's and the repeat's answers of a
    deterministic hash sample of at most about `max_pairs` pairs that both sides answered."""
    (n,) = con.execute("SELECT count(*) FROM pairs WHERE b_err IS NULL AND c_err IS NULL").fetchone() or (0,)
    if not n:
        return []
    m = max(1, math.ceil(n / max_pairs))
    segcols = ", ".join(f"p.{c}" for c in sets.columns)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE sampled_pairs AS
            SELECT p.source, p.part, p."offset"{", " + segcols if segcols else ""} FROM pairs p
            WHERE p.b_err IS NULL AND p.c_err IS NULL AND hash(p.part, p."offset") % {m} = 0"""
    )
    return con.execute(
        f"""SELECT {", ".join(f"s.{c}" for c in sets.columns) + "," if sets.columns else ""}
                   b.output, c.output, q.output
            FROM sampled_pairs s
            JOIN outputs b ON b.source = s.source AND b.part = s.part AND b."offset" = s."offset" AND b.variant = $base
            JOIN outputs c ON c.source = s.source AND c.part = s.part AND c."offset" = s."offset" AND c.variant = $cand
            LEFT JOIN outputs q ON q.source = s.source AND q.part = s.part AND q."offset" = s."offset"
                                AND q.variant = $rep AND q.error_class IS NULL
            ORDER BY s.source, s.part, s."offset\"""",
        {"base": BASELINE, "cand": candidate_variant(candidate), "rep": BASELINE_REPEAT},
    ).fetchall()


def compare_outputs(
    con: duckdb.DuckDBPyConnection,
    sets: SegmentSets,
    candidate: str,
    output_spec: OutputSpec,
    max_pairs: int = 20_000,
    candidate_spec: OutputSpec | None = None,
    baseline_spec: OutputSpec | None = None,
) -> dict[str, OutputStats]:
    """Per-segment output comparisons on a deterministic hash sample of successful pairs. Each
    side's answers are read by its own output mapping (`candidate_spec`, `baseline_spec`; the
    run's `output_spec` where a model has none)."""
    kind = output_spec.kind
    b_spec, c_spec = baseline_spec or output_spec, candidate_spec or output_spec
    prob_path = output_spec.probabilities_path
    b_prob, c_prob = b_spec.probabilities_path or prob_path, c_spec.probabilities_path or prob_path
    prob_path = b_prob or c_prob
    if kind not in ("json", "ranking") and not prob_path:
        return {}
    rows = _sampled_answers(con, sets, candidate, max_pairs)
    ignore = set(output_spec.ignore_fields)
    k = output_spec.top_k or 10
    b_score_path = b_spec.score_path or output_spec.score_path
    c_score_path = c_spec.score_path or output_spec.score_path
    out: dict[str, OutputStats] = {}
    nf = len(sets.fields)
    for row in rows:
        seg_values, (b_txt, c_txt, q_txt) = row[:nf], row[nf:]
        b = orjson.loads(b_txt) if b_txt else None
        c = orjson.loads(c_txt) if c_txt else None
        q = orjson.loads(q_txt) if q_txt else None
        names = [ALL] + [f"{f}={v}" for f, v in zip(sets.fields, seg_values, strict=True)]
        for name in names:
            st = out.setdefault(name, OutputStats())
            st.n += 1
            if kind == "json":
                st.add_json(b, c, q, ignore)
            if kind == "ranking":
                st.add_ranking(lookup(b, b_score_path, None), lookup(c, c_score_path, None), k)
            if prob_path:
                st.add_probabilities(_probs(lookup(b, b_prob, None)), _probs(lookup(c, c_prob, None)))
    return out
