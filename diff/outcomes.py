"""Outcomes joined to the pairs: the outcome workers' exports (replay/outcomes.py) read into the
judge's connection, the first outcome of each request joined to its pair, and per segment the
sums the outcome checks test (diff/outcome_checks.py) and the report draws.

Which outcome counts: the first observed for its request (then by source coordinates, so every
look picks the same one); later ones are duplicates, counted, and those that disagree with the
first are counted apart. A record exported twice (a worker's crash between publishing and
recording an export) is one record: rows are keyed by source coordinates, the copy in the
first folder by worker and number is kept, as for the pairs (diff/exports.py)."""

from __future__ import annotations

from typing import Any

import duckdb
import orjson

from shadowdiff.diff.segments import ALL, SegmentSets
from shadowdiff.schemas.layout import OUTCOME_EXPORT_KEYS, OUTCOME_EXPORT_TABLES, RunLayout
from shadowdiff.schemas.sql import literal

# probabilities are clipped this far from 0 and 1 for the log loss: a confident miss costs
# log(1e6) = 13.8 instead of infinity
_LOG_CLIP = 1e-6
CALIBRATION_BINS = 10

# the outcome store's columns, for an empty table when no worker has exported yet
_EMPTY = {
    "outcomes": 'source VARCHAR, part INTEGER, "offset" BIGINT, request_id VARCHAR, label VARCHAR, value DOUBLE, '
    "observed_at TIMESTAMPTZ, received_at TIMESTAMPTZ",
    "dead_letters": 'source VARCHAR, part INTEGER, "offset" BIGINT, reason VARCHAR, detail VARCHAR, raw_key BLOB, '
    "raw_value BLOB, received_at TIMESTAMPTZ",
}


def load_outcomes(con: duckdb.DuckDBPyConnection, layout: RunLayout) -> bool:
    """Make `outcome_records`, `outcome_dead_letters` and `outcome_workers` (temporary) from the
    run's outcome exports; False when no outcome worker has exported yet (the tables are then
    empty)."""
    folders = layout.outcome_export_folders()
    no_outcomes(con)
    for t in OUTCOME_EXPORT_TABLES:
        target = f"outcome_{t}" if t != "outcomes" else "outcome_records"
        if not folders:
            continue
        files = "[" + ", ".join(literal(str(f / f"{t}.parquet")) for f in folders) + "]"
        keys = OUTCOME_EXPORT_KEYS[t]
        con.execute(f"CREATE OR REPLACE TEMP TABLE {target} AS SELECT * FROM read_parquet({files}, union_by_name = true)")
        # a record in two folders (a crash between publishing an export and recording it) is
        # rare: counted by a hash aggregate first, and only then sorted out
        (rows, distinct) = con.execute(f"SELECT count(*), count(DISTINCT ({keys})) FROM {target}").fetchone() or (0, 0)
        if rows != distinct:
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE {target} AS SELECT * EXCLUDE (filename) FROM (
                      SELECT DISTINCT ON ({keys}) * FROM read_parquet({files}, union_by_name = true, filename = true)
                      ORDER BY {keys}, filename)"""
            )
    beats = [orjson.loads(p.read_bytes()) for p in sorted(layout.outcome_exports.glob("*/heartbeat.json"))]
    latest: dict[str, dict[str, Any]] = {}
    for f in folders:
        manifest = orjson.loads((f / "manifest.json").read_bytes())
        latest[manifest["worker"]] = manifest
    rows = [
        (b["worker"], bool(b.get("final")), bool(latest.get(b["worker"], {}).get("run_meta", {}).get("outcomes_complete")))
        for b in beats
    ]
    if rows:
        con.executemany("INSERT INTO outcome_workers VALUES (?, ?, ?)", rows)
    return bool(folders)


def has_outcomes(con: duckdb.DuckDBPyConnection) -> bool:
    return _temp_table(con, "outcome_records")


def _temp_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    (n,) = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND temporary", [name]).fetchone() or (0,)
    return bool(n)


def _first_outcomes(con: duckdb.DuckDBPyConnection) -> None:
    """`outcome_first`: per request id its first observed outcome, with how many records it has
    and how many of those disagree with the first."""
    con.execute(
        """CREATE OR REPLACE TEMP TABLE outcome_first AS
           SELECT request_id,
                  arg_min(label, (observed_at, source, part, "offset")) AS y_label,
                  arg_min(value, (observed_at, source, part, "offset")) AS y_value,
                  min(observed_at) AS observed_at,
                  count(*) AS records,
                  count(DISTINCT (coalesce(label, ''), coalesce(value::VARCHAR, ''))) AS versions
           FROM outcome_records GROUP BY request_id"""
    )


def _outcome_columns(positive: str) -> dict[str, str]:
    """Per pair with an outcome: what each check sums (NULL where it does not apply)."""
    pos = literal(positive)
    # the binary truth a probability score is read against: a 0/1 value, else the label
    y01 = f"(CASE WHEN y_value IN (0, 1) THEN y_value WHEN y_label IS NOT NULL THEN (y_label = {pos})::DOUBLE END)"
    probs = "b_score BETWEEN 0 AND 1 AND c_score BETWEEN 0 AND 1"

    def ll(score: str) -> str:
        s = f"greatest(least({score}, {1 - _LOG_CLIP}), {_LOG_CLIP})"
        return f"-({y01} * ln({s}) + (1 - {y01}) * ln(1 - {s}))"

    cls = "b_label IS NOT NULL AND c_label IS NOT NULL AND y_label IS NOT NULL"
    prob = f"{probs} AND {y01} IS NOT NULL"
    reg = "b_score IS NOT NULL AND c_score IS NOT NULL AND y_value IS NOT NULL"
    d_brier = f"(power(c_score - {y01}, 2) - power(b_score - {y01}, 2))"
    d_ll = f"({ll('c_score')} - {ll('b_score')})"
    d_ae = "(abs(c_score - y_value) - abs(b_score - y_value))"
    d_se = "(power(c_score - y_value, 2) - power(b_score - y_value, 2))"

    def count(cond: str) -> str:
        return f"count(*) FILTER (WHERE {cond})"

    def total(x: str, cond: str) -> str:
        return f"coalesce(fsum({x}) FILTER (WHERE {cond}), 0)"

    return {
        "n_pairs": "count(*)",
        "n_out": count("has_outcome"),
        "n_cls": count(cls),
        "b_wrong": count(f"{cls} AND b_label <> y_label"),
        "c_wrong": count(f"{cls} AND c_label <> y_label"),
        "c_only_wrong": count(f"{cls} AND c_label <> y_label AND b_label = y_label"),
        "b_only_wrong": count(f"{cls} AND b_label <> y_label AND c_label = y_label"),
        "n_prob": count(prob),
        "sum_brier_b": total(f"power(b_score - {y01}, 2)", prob),
        "sum_brier_c": total(f"power(c_score - {y01}, 2)", prob),
        "sum_d_brier": total(d_brier, prob),
        "sum_d_brier2": total(f"power({d_brier}, 2)", prob),
        "sum_ll_b": total(ll("b_score"), prob),
        "sum_ll_c": total(ll("c_score"), prob),
        "sum_d_ll": total(d_ll, prob),
        "sum_d_ll2": total(f"power({d_ll}, 2)", prob),
        "n_reg": count(reg),
        "sum_ae_b": total("abs(b_score - y_value)", reg),
        "sum_ae_c": total("abs(c_score - y_value)", reg),
        "sum_d_ae": total(d_ae, reg),
        "sum_d_ae2": total(f"power({d_ae}, 2)", reg),
        "sum_se_b": total("power(b_score - y_value, 2)", reg),
        "sum_se_c": total("power(c_score - y_value, 2)", reg),
        "sum_d_se": total(d_se, reg),
        "sum_d_se2": total(f"power({d_se}, 2)", reg),
    }


def _join(con: duckdb.DuckDBPyConnection, sets: SegmentSets, where: str) -> None:
    """`outcome_pairs`: the pairs (those `where` selects) with their first outcome, if any, and
    only the columns the outcome aggregates read: built once, read by every one of them. The
    judge's last call covers every pair (diff/judge.py's `by_sampling` ends with "TRUE"), which
    is what the verdict's summary and examples read."""
    segs = "".join(f"{c}, " for c in sets.columns)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE outcome_pairs AS
            SELECT p.request_id, {segs}p.event_time, p.b_label, p.c_label, p.b_score, p.c_score, p.pair_hi, p.pair_lo,
                   f.y_label, f.y_value, f.observed_at, f.request_id IS NOT NULL AS has_outcome
            FROM (SELECT * FROM pairs WHERE {where}) p LEFT JOIN outcome_first f ON f.request_id = p.request_id"""
    )


def no_outcomes(con: duckdb.DuckDBPyConnection) -> None:
    """Empty outcome tables: a judge whose run has no outcome exports (or that was given a bare
    connection) judges its outcome checks on none."""
    for t in OUTCOME_EXPORT_TABLES:
        target = f"outcome_{t}" if t != "outcomes" else "outcome_records"
        con.execute(f"CREATE OR REPLACE TEMP TABLE {target} ({_EMPTY[t]})")
    con.execute("CREATE OR REPLACE TEMP TABLE outcome_workers (worker VARCHAR, final BOOLEAN, complete BOOLEAN)")
    con.execute("DROP TABLE IF EXISTS outcome_first")  # of the outcomes loaded before


def outcome_stats(
    con: duckdb.DuckDBPyConnection, sets: SegmentSets, positive: str, where: str = "TRUE"
) -> dict[str, dict[str, Any]]:
    """Per segment: the outcome checks' sums over the pairs (`n_pairs`), those with an outcome
    (`n_out`), and each side's reliability bins (probability scores)."""
    if not _temp_table(con, "outcome_first"):  # built once per load, for every candidate
        _first_outcomes(con)
    _join(con, sets, where)
    columns = _outcome_columns(positive)
    inner = ", ".join(f"{sql} AS {name}" for name, sql in columns.items())
    rows = con.execute(
        f"""SELECT {sets.name_sql()} AS segment, {", ".join(columns)} FROM (
              SELECT {sets.select()}, {inner} FROM outcome_pairs {sets.group_by()})"""
    ).fetchall()
    names = ["segment", *columns]
    out = {r[0]: dict(zip(names, r, strict=True)) for r in rows}
    for seg, bins in calibration(con, sets, positive).items():
        if seg in out:
            out[seg]["calibration"] = bins
    return out


def calibration(con: duckdb.DuckDBPyConnection, sets: SegmentSets, positive: str) -> dict[str, dict[str, list[list[float]]]]:
    """Per segment and side ("baseline", "candidate"): reliability bins [mean score, observed
    rate, pairs] over CALIBRATION_BINS equal-width bins of the probability score, over
    `outcome_pairs`."""
    pos = literal(positive)
    y01 = f"(CASE WHEN y_value IN (0, 1) THEN y_value WHEN y_label IS NOT NULL THEN (y_label = {pos})::DOUBLE END)"
    out: dict[str, dict[str, list[list[float]]]] = {}
    for side, col in (("baseline", "b_score"), ("candidate", "c_score")):
        b = f"least(floor({col} * {CALIBRATION_BINS}), {CALIBRATION_BINS - 1})::INTEGER"
        rows = con.execute(
            f"""SELECT {sets.name_sql()} AS segment, bin, mean_score, observed, n FROM (
                  SELECT {sets.select()}, {b} AS bin, avg({col}) AS mean_score, avg({y01}) AS observed, count(*) AS n
                  FROM outcome_pairs WHERE has_outcome AND {col} BETWEEN 0 AND 1 AND {y01} IS NOT NULL
                  {sets.group_by([b])})
                ORDER BY segment, bin"""
        ).fetchall()
        for seg, _, mean_score, observed, n in rows:
            out.setdefault(seg, {}).setdefault(side, []).append([float(mean_score), float(observed), int(n)])
    return out


def expected_calibration_error(bins: list[list[float]]) -> float | None:
    """The pairs-weighted mean |mean score - observed rate| over the reliability bins."""
    n = sum(b[2] for b in bins)
    return sum(abs(b[0] - b[1]) * b[2] for b in bins) / n if n else None


def outcome_summary(
    con: duckdb.DuckDBPyConnection, sets: SegmentSets, per_segment: dict[str, dict[str, Any]], examples: int
) -> dict[str, Any]:
    """The verdict's `outcomes` section (schemas/verdict.Outcomes) from `outcome_stats`."""
    whole = per_segment.get(ALL) or {}
    n_pairs, n_out = int(whole.get("n_pairs") or 0), int(whole.get("n_out") or 0)
    (records,) = con.execute("SELECT count(*) FROM outcome_records").fetchone() or (0,)
    dup, conflicting = con.execute(
        "SELECT coalesce(sum(records - 1), 0), coalesce(sum(records - 1) FILTER (WHERE versions > 1), 0) FROM outcome_first"
    ).fetchone() or (0, 0)
    (unknown,) = con.execute(
        "SELECT count(*) FROM outcome_first f ANTI JOIN pairs p ON p.request_id = f.request_id"
    ).fetchone() or (0,)
    delay = con.execute(
        """SELECT quantile_cont(s, 0.5), quantile_cont(s, 0.9), quantile_cont(s, 0.99) FROM (
             SELECT epoch(observed_at) - epoch(event_time) AS s FROM outcome_pairs WHERE has_outcome)"""
    ).fetchone() or (None, None, None)
    dead = dict(con.execute("SELECT reason, count(*) FROM outcome_dead_letters GROUP BY ALL ORDER BY 1").fetchall())
    workers = con.execute("SELECT worker, complete FROM outcome_workers ORDER BY 1").fetchall()
    return {
        "records": int(records),
        "pairs": n_pairs,
        "with_outcome": n_out,
        "waiting": n_pairs - n_out,
        "waiting_share": (n_pairs - n_out) / n_pairs if n_pairs else None,
        "duplicates": int(dup),
        "conflicting": int(conflicting),
        "unknown_requests": int(unknown),
        "dead_letters": {str(k): int(v) for k, v in dead.items()},
        "delay": {
            "p50_s": None if delay[0] is None else round(float(delay[0]), 3),
            "p90_s": None if delay[1] is None else round(float(delay[1]), 3),
            "p99_s": None if delay[2] is None else round(float(delay[2]), 3),
        },
        "workers": [w for w, _ in workers],
        "complete": bool(workers) and all(c for _, c in workers),
        "calibration": {seg: st["calibration"] for seg, st in sorted(per_segment.items()) if st.get("calibration")},
        "discordant": discordant_examples(con, sets, examples),
    }


def outcome_pace(summary: dict[str, Any]) -> str:
    """How far the outcomes have come and how long they take, for a verdict that waits on them."""
    delay = summary["delay"]
    pace = (
        f"; they arrive a median {delay['p50_s'] / 3600:.1f} h after the request (p90 {delay['p90_s'] / 3600:.1f} h)"
        if delay["p50_s"] is not None and delay["p90_s"] is not None
        else ""
    )
    share = summary["waiting_share"]
    waiting = f" ({share:.0%} still waiting)" if share is not None else ""
    return f"outcomes: {summary['with_outcome']:,} of {summary['pairs']:,} pairs resolved{waiting}{pace}"


def discordant_examples(con: duckdb.DuckDBPyConnection, sets: SegmentSets, limit: int) -> list[dict[str, Any]]:
    """Where the two models disagree and the outcome says who was right: up to `limit` pairs
    with an outcome, those the candidate got wrong first; for numeric outcomes, the pairs
    whose candidate error exceeds the baseline's the most. A deterministic pick (by the pairs'
    coordinate hash), so a re-judge shows the same ones."""
    if limit <= 0:
        return []
    segs = ", ".join(f"{c} AS {c}" for c in sets.columns)
    labelled = "b_label IS NOT NULL AND c_label IS NOT NULL AND y_label IS NOT NULL AND b_label <> c_label"
    numeric = "b_score IS NOT NULL AND c_score IS NOT NULL AND y_value IS NOT NULL"
    rows = con.execute(
        f"""SELECT request_id, {segs + "," if segs else ""} b_label, c_label, b_score, c_score, y_label, y_value,
                   CASE WHEN {labelled} THEN (CASE WHEN c_label = y_label THEN 'candidate'
                                                   WHEN b_label = y_label THEN 'baseline' ELSE 'neither' END)
                        ELSE (CASE WHEN abs(c_score - y_value) < abs(b_score - y_value) THEN 'candidate'
                                   WHEN abs(c_score - y_value) > abs(b_score - y_value) THEN 'baseline' ELSE 'both' END)
                   END AS closer,
                   CASE WHEN {labelled} THEN 0 ELSE abs(b_score - y_value) - abs(c_score - y_value) END AS edge
            FROM outcome_pairs
            WHERE has_outcome AND (({labelled}) OR (NOT ({labelled}) AND {numeric} AND b_score <> c_score))
            ORDER BY ({labelled}) DESC, closer = 'candidate', edge, pair_hi, pair_lo
            LIMIT {int(limit)}"""
    ).fetchall()
    out = []
    for r in rows:
        rid, *rest = r
        seg_values = dict(zip(sets.fields, rest[: len(sets.fields)], strict=True))
        b_label, c_label, b_score, c_score, y_label, y_value, closer, _ = rest[len(sets.fields) :]
        out.append(
            {
                "request_id": rid,
                "segments": {k: v for k, v in seg_values.items() if v is not None},
                "baseline": {"label": b_label, "score": b_score},
                "candidate": {"label": c_label, "score": c_score},
                "outcome": {"label": y_label, "value": y_value},
                "right": closer,
            }
        )
    return out
