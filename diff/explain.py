"""What a verdict shows beside its checks: where failures concentrate, the data window and
offsets, and the most different pairs side by side."""

from __future__ import annotations

import hashlib
from typing import Any

import duckdb
import orjson

from shadowdiff.diff import checks as ck
from shadowdiff.diff.comparators import json_diff
from shadowdiff.diff.exports import cache_generation
from shadowdiff.diff.kept import RATE, KeptPairs, PairAggregate, StoredCounts, kept_table, maintained, rate_pairs
from shadowdiff.diff.load import RunInfo
from shadowdiff.diff.segments import ALL, SegmentSets
from shadowdiff.diff.signed import pair_set
from shadowdiff.schemas.config import ModelSpec, default_rows_per_call
from shadowdiff.schemas.records import BASELINE, candidate_variant


def localise(results: list[ck.CheckResult], sets: SegmentSets) -> list[str]:
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


def excess(r: ck.CheckResult) -> float:
    """How far past its threshold a failed check is (relative), to list the worst first."""
    if r.value is None or not r.threshold:
        return float(r.value or 0.0)
    return (abs(r.value) - r.threshold) / abs(r.threshold)


def data_section(
    con: duckdb.DuckDBPyConnection, info: RunInfo, t_min: Any, t_max: Any, kept: KeptPairs | None = None
) -> dict[str, Any]:
    """Pairs (and why they were sampled), event-time window, offsets, consumed and dead letters;
    `kept`: the judge's cache keeps the pairs (diff/signed.pair_set)."""
    offsets = [
        {"source": s, "partition": p, "next_offset": o, "consumed": c, "sampled": k}
        for s, p, o, c, k in con.execute(
            "SELECT source, part, next_offset, consumed, sampled FROM checkpoints ORDER BY 1, 2"
        ).fetchall()
    ]
    dead = con.execute("SELECT count(*) FROM dead_letters").fetchone()
    # which requests were judged, whoever stored them: equal for one worker or several over
    # the same traffic, and for a run read from its stores or from its exports
    # the sums of the pairs' md5s of their coordinates and request id: free of order, so pairs
    # kept between looks and pairs built whole give the same digest
    total, quota, hi, lo = pair_set(con, kept)
    digest = hashlib.sha256(f"{int(total)}:{int(hi)}:{int(lo)}".encode()).hexdigest()
    return {
        "pairs": int(total),
        "pair_set_digest": digest,
        "pairs_by_reason": {"rate": int(total) - int(quota), "quota": int(quota)},
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


class _SentRows(StoredCounts):
    """Per variant, the rows sent to its model, kept in a judge's cache as of a look."""

    name = "rows_sent"
    spec = "v1"
    stored = "outputs"
    keys = ("variant",)
    counted = ("n",)

    def counts(self, rows: str) -> str:
        # a call the breaker held back was not sent
        return f"""SELECT variant, count(*) FILTER (WHERE error_class IS DISTINCT FROM 'circuit_open') AS n
                   FROM {rows} GROUP BY variant"""


def offered_load(con: duckdb.DuckDBPyConnection, info: RunInfo, candidate: str) -> dict[str, Any]:
    """What the shadow asked of each side whose latency is compared: rows per call, the calls in
    flight allowed, the rate cap, the rows sent (a call the breaker held back was not sent) and
    the rate one replay process sent them at. Both sides get each batch at the same
    moment, so at equal rows per call their latencies are measured at the same offered load."""
    gen = cache_generation(con)
    sent_rows = _SentRows(con)
    rows = sent_rows.counts("outputs") if gen is None else f"SELECT * FROM {kept_table(con, 'rows_sent', sent_rows, gen)}"
    sent = dict(con.execute(rows).fetchall())
    # the rate one replay process offered: the requests it sampled (each sent to every model)
    # over its own busy time, as its last statistics say
    stats = info.meta.get("last_stats") or {}
    busy = float(stats.get("seconds", 0)) - float(stats.get("idle_seconds", 0))
    rate = round(float(stats.get("sampled", 0)) / busy, 1) if busy > 0 else None

    def side(spec: ModelSpec | None, variant: str) -> dict[str, Any]:
        if spec is None:
            return {"called": False, "note": "live: answers recorded in production, not called by the shadow"}
        rows = int(sent.get(variant, 0))
        per_call = spec.batch_size or default_rows_per_call(spec.kind)
        return {
            "called": True,
            "kind": spec.kind,
            "rows_per_call": per_call,
            "calls_in_flight": f"adaptive, at most {spec.concurrency}"
            if spec.adaptive_concurrency and spec.kind != "python"
            else f"{spec.concurrency} fixed",
            "max_rps": spec.max_rps,
            "rows_sent": rows,
            "rows_per_s_per_worker": rate,
        }

    baseline = info.run.baseline
    model = baseline.model if baseline.kind == "model" else None
    return {"baseline": side(model, "baseline"), "candidate": side(info.candidate(candidate), f"candidate:{candidate}")}


# the most different pairs first: label flips, then the largest score gaps, then failures
_MOST_DIFFERENT = 'flip DESC, gap DESC, failed DESC, source, part, "offset"'


def _ranked(sets: SegmentSets, source: str) -> str:
    """SQL: the pairs of `source` that `_MOST_DIFFERENT` orders, with what an example shows."""
    segcols = "".join(f"{c}, " for c in sets.columns)
    return f"""(SELECT request_id, source, part, "offset", {segcols}b_score, c_score, b_label, c_label, c_err,
                       (b_label IS DISTINCT FROM c_label AND c_err IS NULL) AS flip,
                       abs(coalesce(c_score - b_score, 0)) AS gap, (c_err IS NOT NULL) AS failed
                FROM {source})"""


class _TopPairs(PairAggregate):
    """The `keep` most different pairs (more than the `k` shown). A delta takes back the kept
    ones it removes, and its added pairs compete with those left: the table then holds the top
    of the pairs, however many it has left, and is built again only when fewer than `k` are
    left. `<table>_whole` says whether the table holds every pair (then it grows as pairs come)."""

    name = "examples"

    def __init__(self, con: duckdb.DuckDBPyConnection, sets: SegmentSets, k: int, kept_table: str) -> None:
        self.con, self.sets, self.k, self.kept_table = con, sets, k, kept_table
        self.keep = max(4 * k, 64)
        self.spec = repr((sets.columns, k, self.keep, _MOST_DIFFERENT))

    def top(self, sources: list[str], limit: int) -> str:
        union = " UNION ALL ".join(f"SELECT * FROM {s}" for s in sources)
        return f"SELECT * FROM ({union}) ORDER BY {_MOST_DIFFERENT} LIMIT {int(limit)}"

    def _count(self, table: str) -> int:
        (n,) = self.con.execute(f"SELECT count(*) FROM {table}").fetchone() or (0,)
        return int(n)

    def build(self, table: str, source: str) -> None:
        added = _ranked(self.sets, f"(SELECT * FROM {source} WHERE sign > 0)")
        self.con.execute(f"CREATE OR REPLACE TABLE {table} AS {self.top([added], self.keep)}")
        self.con.execute(f"CREATE OR REPLACE TABLE {table}_whole AS SELECT {self._count(table) < self.keep} AS whole")

    def apply(self, table: str, delta: str) -> str | None:
        con = self.con
        (whole,) = con.execute(f"SELECT whole FROM {table}_whole").fetchone() or (False,)
        con.execute(
            f"""DELETE FROM {table} t WHERE EXISTS (SELECT 1 FROM {delta} d WHERE d.sign < 0
                AND d.source = t.source AND d.part = t.part AND d."offset" = t."offset")"""
        )
        left = self._count(table)
        if not whole and left < self.k:
            self.build(table, rate_pairs(self.kept_table))
            return f"{left} kept examples left of {self.k}"
        # the pairs left are the top of the pairs left: an added pair ranks among them, or
        # below some pair no longer kept
        added = _ranked(self.sets, f"(SELECT * FROM {delta} WHERE sign > 0)")
        con.execute(f"CREATE OR REPLACE TABLE {table} AS {self.top([table, added], self.keep if whole else left)}")
        con.execute(f"CREATE OR REPLACE TABLE {table}_whole AS SELECT {bool(whole) and self._count(table) < self.keep} AS whole")
        return None


def examples(
    con: duckdb.DuckDBPyConnection, sets: SegmentSets, k: int, candidate: str, kept: KeptPairs | None = None
) -> list[dict[str, Any]]:
    """The most different pairs: label flips first, then largest score gaps, then failures.
    With `kept` (a judge's cache), the rate samples' top `k` is kept between looks."""
    if k == 0:
        return []
    top = _TopPairs(con, sets, k, kept.table if kept is not None else "")
    sources = [_ranked(sets, "pairs")]
    if kept is not None:
        sources = [maintained(con, kept, top), _ranked(sets, f"(SELECT * FROM pairs WHERE NOT ({RATE}))")]
    # pick the k pairs from `pairs` alone (a top-k heap), then fetch only their texts: joining
    # the full tables first would cost seconds on a 10M-pair run
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE top_pairs AS
            SELECT row_number() OVER (ORDER BY {_MOST_DIFFERENT}) AS rank, * EXCLUDE (flip, gap, failed)
            FROM ({top.top(sources, k)})"""
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
