"""Read a run from its writers' checkpoint exports (replay/exports.py): Parquet folders that any
reader may take while the writers hold their DuckDB files, on this machine or from an object
store. One row per source coordinates: a row exported twice (a crash between publishing a
folder and recording it, or two workers that both stored a message during a rebalance) is kept
once, the copy in the first folder by worker and number, so every look picks the same one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from schemas.errors import StoreError
from schemas.layout import EXPORT_KEYS, EXPORT_TABLES, RunLayout


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def read_manifests(layout: RunLayout) -> list[dict[str, Any]]:
    return [orjson.loads((f / "manifest.json").read_bytes()) | {"folder": str(f)} for f in layout.export_folders()]


def open_exports(home: Path, run_id: str, memory_limit: str = "2GB") -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the run's tables built from every published export, and a
    `coverage` table: per worker, the last export it published and its heartbeat."""
    layout = RunLayout(home, run_id)
    manifests = read_manifests(layout)
    if not manifests:
        raise StoreError(f"run {run_id!r} has no exports under {layout.exports}")
    tmp = layout.dir / ".tmp"
    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(tmp)})
    for t in EXPORT_TABLES:
        files = "[" + ", ".join(_quote(str(Path(m["folder"]) / f"{t}.parquet")) for m in manifests) + "]"
        keys = EXPORT_KEYS[t]
        # materialised once: the judge reads these many times, a view would sort at every read
        con.execute(
            f"""CREATE TABLE {t} AS SELECT * EXCLUDE (filename) FROM (
                  SELECT DISTINCT ON ({keys}) * FROM read_parquet({files}, union_by_name = true, filename = true)
                  ORDER BY {keys}, filename)"""
        )
    latest: dict[str, dict[str, Any]] = {}
    for m in manifests:
        if m["worker"] not in latest or m["seq"] > latest[m["worker"]]["seq"]:
            latest[m["worker"]] = m
    con.execute("CREATE TABLE checkpoints (source VARCHAR, part INTEGER, next_offset BIGINT, consumed BIGINT, sampled BIGINT)")
    rows = [
        (c["source"], c["part"], c["next_offset"], c["consumed"], c["sampled"]) for m in latest.values() for c in m["checkpoints"]
    ]
    if rows:
        con.executemany("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)", rows)
    # a partition that moved between workers: read up to the furthest, counted by each reader
    con.execute(
        """CREATE OR REPLACE TABLE checkpoints AS SELECT source, part, max(next_offset) AS next_offset,
           sum(consumed)::BIGINT AS consumed, sum(sampled)::BIGINT AS sampled FROM checkpoints GROUP BY ALL"""
    )
    newest = max(manifests, key=lambda m: (m["created_at"], m["worker"]))
    con.execute("CREATE TABLE run_meta (key VARCHAR, value JSON)")
    con.executemany(
        "INSERT INTO run_meta VALUES (?, ?)", [(k, orjson.dumps(v).decode()) for k, v in sorted(newest["run_meta"].items())]
    )
    con.execute("CREATE TABLE coverage (worker VARCHAR, seq INTEGER, exported_at VARCHAR, heartbeat_at VARCHAR, final BOOLEAN)")
    beats = {b["worker"]: b for b in (orjson.loads(p.read_bytes()) for p in layout.heartbeats())}
    con.executemany(
        "INSERT INTO coverage VALUES (?, ?, ?, ?, ?)",
        [
            (w, m["seq"], m["created_at"], beats.get(w, {}).get("at"), bool(beats.get(w, {}).get("final", False)))
            for w, m in sorted(latest.items())
        ],
    )
    return con


def coverage(con: duckdb.DuckDBPyConnection, silent_after_s: float) -> dict[str, Any] | None:
    """Which workers' exports a verdict covers, and which of them stopped reporting (no
    heartbeat for `silent_after_s` and no final export); None for a run read from its stores."""
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'coverage'").fetchone()[0]:  # type: ignore[index]
        return None
    now = datetime.now(UTC)
    workers = []
    for worker, seq, exported_at, heartbeat_at, final in con.execute("SELECT * FROM coverage ORDER BY worker").fetchall():
        last = datetime.fromisoformat(heartbeat_at or exported_at)
        silent_s = (now - last).total_seconds()
        workers.append(
            {
                "worker": worker,
                "exports": seq,
                "last_export_at": exported_at,
                "heartbeat_at": heartbeat_at,
                "final": final,
                "silent": not final and silent_s > silent_after_s,
                "silent_for_s": round(silent_s, 1),
            }
        )
    return {"source": "exports", "workers": workers, "silent_workers": [w["worker"] for w in workers if w["silent"]]}
