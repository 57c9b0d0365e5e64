"""Outcomes read for the judge: the outcome workers' exports (replay/outcomes.py) as
`outcome_records` and `outcome_dead_letters`, and `outcome_first`, each request's first
observed outcome, which diff/outcome_aggregates.py joins to the pairs.

Which outcome counts: the first observed for its request (then by source coordinates, so every
look picks the same one); later ones are duplicates, counted, and those that disagree with the
first are counted apart. A record exported twice (a worker's crash between publishing and
recording an export) is one record: rows are keyed by source coordinates.

On the watching judge's cache (diff/exports.open_cache) the records and `outcome_first` are
kept between looks: a look reads only the outcome folders it has not read, numbers that
reading (the outcome sequence), and brings `outcome_first` up for the requests it touched.
Anywhere else they are read whole into temporary tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import orjson

from shadowdiff.diff.exports import cache_generation, table_exists
from shadowdiff.diff.segments import ALL
from shadowdiff.schemas.layout import OUTCOME_EXPORT_KEYS, OUTCOME_EXPORT_TABLES, RunLayout
from shadowdiff.schemas.sql import literal

# the outcome store's columns, for an empty table when no worker has exported yet
_COLUMNS = {
    "outcomes": 'source VARCHAR, part INTEGER, "offset" BIGINT, request_id VARCHAR, label VARCHAR, value DOUBLE, '
    "observed_at TIMESTAMPTZ, received_at TIMESTAMPTZ",
    "dead_letters": 'source VARCHAR, part INTEGER, "offset" BIGINT, reason VARCHAR, detail VARCHAR, raw_key BLOB, '
    "raw_value BLOB, received_at TIMESTAMPTZ",
}
_NAMES = {"outcomes": "outcome_records", "dead_letters": "outcome_dead_letters"}
_FIRST = """SELECT request_id,
                   arg_min(label, (observed_at, source, part, "offset")) AS y_label,
                   arg_min(value, (observed_at, source, part, "offset")) AS y_value,
                   min(observed_at) AS observed_at,
                   count(*) AS records,
                   count(DISTINCT (coalesce(label, ''), coalesce(value::VARCHAR, ''))) AS versions
            FROM {records} {where} GROUP BY request_id"""


def load_outcomes(con: duckdb.DuckDBPyConnection, layout: RunLayout) -> bool:
    """Make the outcome relations from the run's outcome exports; False when no outcome worker
    has exported yet (they are then empty)."""
    folders = layout.outcome_export_folders()
    if cache_generation(con) is not None:
        _ingest(con, layout, folders)
    else:
        no_outcomes(con)
        for t in OUTCOME_EXPORT_TABLES:
            if folders:
                _read_whole(con, t, folders)
        con.execute(f"CREATE OR REPLACE TEMP TABLE outcome_first AS {_FIRST.format(records='outcome_records', where='')}")
    _workers(con, layout, folders)
    return bool(folders)


def no_outcomes(con: duckdb.DuckDBPyConnection) -> None:
    """Empty outcome relations: a judge whose run has no outcome exports (or that was given a
    bare connection) judges its outcome checks on none."""
    for t in OUTCOME_EXPORT_TABLES:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {_NAMES[t]} ({_COLUMNS[t]})")
    con.execute(f"CREATE OR REPLACE TEMP TABLE outcome_first AS {_FIRST.format(records='outcome_records', where='')}")
    con.execute("CREATE OR REPLACE TEMP TABLE outcome_workers (worker VARCHAR, final BOOLEAN, complete BOOLEAN)")


def _read_whole(con: duckdb.DuckDBPyConnection, t: str, folders: list[Path]) -> None:
    target, keys = _NAMES[t], OUTCOME_EXPORT_KEYS[t]
    files = "[" + ", ".join(literal(str(f / f"{t}.parquet")) for f in folders) + "]"
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


def _ingest(con: duckdb.DuckDBPyConnection, layout: RunLayout, folders: list[Path]) -> None:
    """On a judge's cache: add the folders it has not read (in folder order, each record once),
    and bring `cached_outcome_first` up for the requests they resolve, in one transaction."""
    con.execute("CREATE TABLE IF NOT EXISTS outcome_ingested (folder VARCHAR PRIMARY KEY, outcome_seq INTEGER)")
    for t in OUTCOME_EXPORT_TABLES:
        con.execute(
            f"""CREATE TABLE IF NOT EXISTS cached_{_NAMES[t]} ({_COLUMNS[t]}, outcome_seq INTEGER,
                PRIMARY KEY ({OUTCOME_EXPORT_KEYS[t]}))"""
        )
    if not table_exists(con, "cached_outcome_first"):
        con.execute(f"CREATE TABLE cached_outcome_first AS {_FIRST.format(records='cached_outcome_records', where='')}")
    have = {f for (f,) in con.execute("SELECT folder FROM outcome_ingested").fetchall()}
    new = [f for f in folders if f.relative_to(layout.outcome_exports).as_posix() not in have]
    if new:
        con.execute("BEGIN")
        try:
            (seq,) = con.execute("SELECT coalesce(max(outcome_seq), 0) + 1 FROM outcome_ingested").fetchone() or (1,)
            for t in OUTCOME_EXPORT_TABLES:
                files = "[" + ", ".join(literal(str(f / f"{t}.parquet")) for f in new) + "]"
                # a record another folder holds too keeps the copy already read (the same row)
                con.execute(
                    f"""INSERT OR IGNORE INTO cached_{_NAMES[t]} BY NAME SELECT * EXCLUDE (filename), {int(seq)} AS outcome_seq
                        FROM read_parquet({files}, union_by_name = true, filename = true) ORDER BY filename"""
                )
            touched = f"WHERE request_id IN (SELECT request_id FROM cached_outcome_records WHERE outcome_seq = {int(seq)})"
            con.execute(f"DELETE FROM cached_outcome_first {touched}")
            con.execute(f"INSERT INTO cached_outcome_first {_FIRST.format(records='cached_outcome_records', where=touched)}")
            con.executemany(
                "INSERT INTO outcome_ingested VALUES (?, ?)",
                [(f.relative_to(layout.outcome_exports).as_posix(), int(seq)) for f in new],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    for t in OUTCOME_EXPORT_TABLES:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {_NAMES[t]} AS SELECT * EXCLUDE (outcome_seq) FROM cached_{_NAMES[t]}")
    con.execute("CREATE OR REPLACE TEMP VIEW outcome_first AS SELECT * FROM cached_outcome_first")


def outcome_sequence(con: duckdb.DuckDBPyConnection) -> int | None:
    """On a judge's cache, the number of the last reading of outcome folders (0 before any);
    None elsewhere."""
    if not table_exists(con, "outcome_ingested"):
        return None
    (kept,) = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'outcome_records' AND temporary").fetchone() or (
        0,
    )
    if not kept:  # this connection read its outcomes whole, or none: the kept parts would not match them
        return None
    (seq,) = con.execute("SELECT coalesce(max(outcome_seq), 0) FROM outcome_ingested").fetchone() or (0,)
    return int(seq)


def _workers(con: duckdb.DuckDBPyConnection, layout: RunLayout, folders: list[Path]) -> None:
    con.execute("CREATE OR REPLACE TEMP TABLE outcome_workers (worker VARCHAR, final BOOLEAN, complete BOOLEAN)")
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


def has_outcomes(con: duckdb.DuckDBPyConnection) -> bool:
    (n,) = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'outcome_workers' AND temporary").fetchone() or (
        0,
    )
    return bool(n)


def expected_calibration_error(bins: list[list[float]]) -> float | None:
    """The pairs-weighted mean |mean score - observed rate| over the reliability bins."""
    n = sum(b[2] for b in bins)
    return sum(abs(b[0] - b[1]) * b[2] for b in bins) / n if n else None


def outcome_summary(con: duckdb.DuckDBPyConnection, per_segment: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The verdict's `outcomes` section (schemas/verdict.Outcomes) from the outcome statistics
    (diff/outcome_aggregates.outcome_stats)."""
    whole = per_segment.get(ALL) or {}
    n_pairs, n_out = int(whole.get("n_pairs") or 0), int(whole.get("n_out") or 0)
    (records,) = con.execute("SELECT count(*) FROM outcome_records").fetchone() or (0,)
    resolved, dup, conflicting = con.execute(
        """SELECT count(*), coalesce(sum(records - 1), 0), coalesce(sum(records - 1) FILTER (WHERE versions > 1), 0)
           FROM outcome_first"""
    ).fetchone() or (0, 0, 0)
    dead = dict(con.execute("SELECT reason, count(*) FROM outcome_dead_letters GROUP BY ALL ORDER BY 1").fetchall())
    workers = con.execute("SELECT worker, complete FROM outcome_workers ORDER BY 1").fetchall()
    delay = whole.get("delay_s") or [None, None, None]
    return {
        "records": int(records),
        "pairs": n_pairs,
        "with_outcome": n_out,
        "waiting": n_pairs - n_out,
        "waiting_share": (n_pairs - n_out) / n_pairs if n_pairs else None,
        "duplicates": int(dup),
        "conflicting": int(conflicting),
        # resolved requests that no judged pair has (quota samples left out of `pairs` too)
        "unknown_requests": int(resolved) - int(whole.get("n_out_every_pair") or 0),
        "dead_letters": {str(k): int(v) for k, v in dead.items()},
        "delay": {f"p{q}_s": None if v is None else round(v, 3) for q, v in zip((50, 90, 99), delay, strict=True)},
        "workers": [w for w, _ in workers],
        "complete": bool(workers) and all(c for _, c in workers),
        "calibration": {seg: st["calibration"] for seg, st in sorted(per_segment.items()) if st.get("calibration")},
        "discordant": whole.get("examples") or [],
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
