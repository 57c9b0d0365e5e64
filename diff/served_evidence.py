"""The evidence of a served-traffic run (a canary analysis or a rollback verification): the
inference-log rows of both sides, unpaired, and their aggregates per segment and side.

Sides: `c` the subject (the canary, or the service since the rollback), `b` the reference (the
stable, or the last-known-good window), each chosen by version and time window. Every row has a
`clock`: seconds since its side's origin. A canary's two sides share one origin (they are
compared over the same wall-clock time: a burst of load on the cluster reaches both); a
rollback's each start at their own window's start (the same minute of the last-known-good hour
is compared with the same minute since the rollback)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import orjson

from shadowdiff.diff.aggregate import latency_grid
from shadowdiff.diff.segments import ALL
from shadowdiff.schemas.config import CompareSpec, ServedRunConfig, SideSpec
from shadowdiff.schemas.layout import RunLayout
from shadowdiff.schemas.sql import literal
from shadowdiff.schemas.verdict import Coverage, WorkerCoverage

LAT_QS = [0.5, 0.95, 0.99]
SLICE_S = 5  # latency blocks and windows are built from slices of this many seconds of clock
BLOCK_MIN = 200  # subject records a latency block holds at least (its quantiles are read per block)
SCORE_BINS = 50
_ACTIVE_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # where a segment's active clock starts (only differences are read)

_COLUMNS = (
    'source VARCHAR, part INTEGER, "offset" BIGINT, request_id VARCHAR, version VARCHAR, event_time TIMESTAMPTZ, '
    "latency_ms DOUBLE, status VARCHAR, ok BOOLEAN, segments JSON, input JSON, score DOUBLE, label VARCHAR, "
    "received_at TIMESTAMPTZ"
)


_DEAD_COLUMNS = 'source VARCHAR, part INTEGER, "offset" BIGINT, reason VARCHAR, detail VARCHAR'


def load_served(con: duckdb.DuckDBPyConnection, layout: RunLayout | None) -> list[dict[str, Any]]:
    """`served_rows`: every stored row once (a re-published export changes nothing). From the
    workers' exports when `layout` is given, else from the connection's own `served` table (a
    worker judging on its writer connection). Returns the exports' manifests (coverage)."""
    manifests: list[dict[str, Any]] = []
    if layout is None:
        con.execute("CREATE OR REPLACE TEMP VIEW served_rows AS SELECT * FROM served")
        con.execute("CREATE OR REPLACE TEMP VIEW served_dead AS SELECT * FROM dead_letters")
        return manifests
    folders = layout.served_export_folders()
    manifests = [orjson.loads((f / "manifest.json").read_bytes()) for f in folders]
    for table, view in (("served", "served_rows"), ("dead_letters", "served_dead")):
        files = [str(f / f"{table}.parquet") for f in folders if (f / f"{table}.parquet").exists()]
        cols = _COLUMNS if table == "served" else _DEAD_COLUMNS
        if files:
            listed = ", ".join(literal(p) for p in files)
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE {view} AS SELECT * FROM read_parquet([{listed}], union_by_name = true)
                QUALIFY row_number() OVER (PARTITION BY source, part, "offset") = 1"""
            )
        else:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {view} ({cols})")
    return manifests


def newest_manifests(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each worker's newest export manifest (manifests come in worker then number order)."""
    return {m["worker"]: m for m in manifests}


def served_coverage(layout: RunLayout, manifests: list[dict[str, Any]], silent_after_s: float) -> Coverage | None:
    """Which served workers' exports a verdict covers, from their heartbeats: a worker silent
    for `silent_after_s` without its final export, or whose exports fail, is named."""
    beats = [orjson.loads(b.read_bytes()) for b in sorted(layout.served_exports.glob("*/heartbeat.json"))]
    if not beats:
        return None
    last = newest_manifests(manifests)
    now = datetime.now(UTC)
    workers = []
    for b in beats:
        m = last.get(b["worker"], {})
        silent_s = (now - datetime.fromisoformat(b["at"])).total_seconds()
        workers.append(
            WorkerCoverage(
                worker=b["worker"],
                exports=int(m.get("seq", 0)),
                last_export_at=m.get("created_at"),
                heartbeat_at=b["at"],
                final=bool(b.get("final")),
                silent=not b.get("final") and silent_s > silent_after_s,
                silent_for_s=round(silent_s, 1),
                failed_exports=int(b.get("failed_exports", 0)),
                failing_exports=int(b.get("failing_exports", 0)),
                last_export_failure=b.get("last_failure"),
            )
        )
    return Coverage(source="exports", workers=workers, silent_workers=[w.worker for w in workers if w.silent])


def _side_sql(side: SideSpec) -> str:
    parts = [f"version = {literal(side.version)}"]
    if side.start is not None:
        parts.append(f"event_time >= {literal(side.start.isoformat())}::TIMESTAMPTZ")
    if side.end is not None:
        parts.append(f"event_time < {literal(side.end.isoformat())}::TIMESTAMPTZ")
    return " AND ".join(parts)


@dataclass
class SideStats:
    n: int = 0
    errors: int = 0
    n_lat: int = 0
    lat_q: list[float] = field(default_factory=list)  # on GRID
    n_score: int = 0
    score_sum: float = 0.0
    score_sq: float = 0.0
    labels: dict[str, int] = field(default_factory=dict)


@dataclass
class SegmentEvidence:
    segment: str
    seg_field: str | None
    value: str | None
    b: SideStats
    c: SideStats
    blocks: list[dict[str, Any]] = field(default_factory=list)  # latency blocks, as diff/checks.latency reads them
    windows: list[dict[str, Any]] = field(default_factory=list)  # tumbling windows of the sustained checks
    score_hist: dict[str, Any] | None = None


@dataclass
class ServedEvidence:
    compare: CompareSpec
    fields: list[str]
    segments: dict[str, SegmentEvidence]
    t_min: datetime | None
    t_max: datetime | None
    consumed: int
    dead_letters: int
    origins: dict[str, datetime | None]
    manifests: list[dict[str, Any]]
    quantiles: list[float]  # the latency quantiles read per block and window
    grid: list[float]  # the quantile fractions each side's pooled latencies are read at

    @property
    def all(self) -> SegmentEvidence:
        return self.segments[ALL]


def gather(
    con: duckdb.DuckDBPyConnection,
    cfg: ServedRunConfig,
    manifests: list[dict[str, Any]],
    window_minutes: Sequence[float],
    quantiles: list[float],
) -> ServedEvidence:
    """Sides, segments and every aggregate the checks read, from `served_rows`."""
    cmp = cfg.compare
    fields = list(cfg.segments.fields)
    seg_cols = ", ".join(f"json_extract_string(segments, {literal('$.' + _json_key(f))}) AS s{i}" for i, f in enumerate(fields))
    subject, reference = _side_sql(cmp.subject), _side_sql(cmp.reference)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE sided AS
        SELECT CASE WHEN {subject} THEN 'c' ELSE 'b' END AS side, event_time, ok, latency_ms, score, label, input
               {", " + seg_cols if seg_cols else ""}
        FROM served_rows WHERE ({subject}) OR ({reference})"""
    )
    if cmp.mode == "canary":
        # over the same time: the stable's traffic before the canary's first answer or after its
        # last (a topic read from its start, a canary stopped) would compare other hours' traffic
        con.execute(
            """DELETE FROM sided WHERE side = 'b' AND (
                   event_time < (SELECT min(event_time) FROM sided WHERE side = 'c')
                   OR event_time > (SELECT max(event_time) FROM sided WHERE side = 'c'))"""
        )
    origins = _origins(con, cmp)
    case = " ".join(
        f"WHEN '{s}' THEN epoch_us(event_time) - {int(t.timestamp() * 1_000_000) if t else 0}" for s, t in origins.items()
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE sided_clock AS SELECT *, (CASE side {case} END) / 1e6 AS clock FROM sided")
    t_min, t_max = con.execute("SELECT min(event_time), max(event_time) FROM sided").fetchone() or (None, None)
    grid = latency_grid(quantiles)
    segments: dict[str, SegmentEvidence] = {}
    for i, f in [(None, None), *enumerate(fields)]:
        col = "NULL" if i is None else f"s{i}"
        for value, stats in _side_stats(con, col, grid).items():
            seg = ALL if i is None else f"{f}={value}"
            segments[seg] = SegmentEvidence(seg, f, value, stats.get("b", SideStats()), stats.get("c", SideStats()))
        _blocks(con, col, f, segments, quantiles)
        for minutes in window_minutes:
            _windows(con, col, f, segments, minutes, quantiles)
        _score_hists(con, col, f, segments)
    if ALL not in segments:
        segments[ALL] = SegmentEvidence(ALL, None, None, SideStats(), SideStats())
    consumed = _consumed(manifests) if manifests else _stored_consumed(con)
    (dead,) = con.execute("SELECT count(*) FROM served_dead").fetchone() or (0,)
    return ServedEvidence(cmp, fields, segments, t_min, t_max, consumed, int(dead), origins, manifests, quantiles, grid)


def _json_key(name: str) -> str:
    return name if name.replace("_", "").isalnum() else '"' + name.replace('"', '\\"') + '"'


def _consumed(manifests: list[dict[str, Any]]) -> int:
    """Records read, from each worker's newest manifest."""
    last = newest_manifests(manifests)
    return sum(int(c["consumed"]) for m in last.values() for c in m.get("checkpoints", []))


def _stored_consumed(con: duckdb.DuckDBPyConnection) -> int:
    """Records read, from the writer's own checkpoints (a worker judging on its connection)."""
    (n,) = con.execute("SELECT coalesce(sum(consumed), 0) FROM checkpoints").fetchone() or (0,)
    return int(n)


def _origins(con: duckdb.DuckDBPyConnection, cmp: CompareSpec) -> dict[str, datetime | None]:
    if cmp.mode == "rollback":
        return {"b": cmp.reference.start, "c": cmp.subject.start}
    (first,) = con.execute("SELECT min(event_time) FROM sided").fetchone() or (None,)
    return {"b": first, "c": first}


def _side_stats(con: duckdb.DuckDBPyConnection, col: str, fractions: list[float]) -> dict[str | None, dict[str, SideStats]]:
    grid = "[" + ", ".join(repr(g) for g in fractions) + "]"
    rows = con.execute(
        f"""SELECT {col} AS v, side, count(*), count(*) FILTER (WHERE NOT ok), count(latency_ms),
                   quantile_cont(latency_ms, {grid}), count(score), coalesce(sum(score), 0), coalesce(sum(score * score), 0)
            FROM sided_clock GROUP BY ALL"""
    ).fetchall()
    out: dict[str | None, dict[str, SideStats]] = {}
    for v, side, n, err, n_lat, q, n_s, s1, s2 in rows:
        if col != "NULL" and v is None:
            continue  # a record without this segment field is in `all` only
        out.setdefault(v, {})[side] = SideStats(int(n), int(err), int(n_lat), list(q or []), int(n_s), float(s1), float(s2))
    labels = con.execute(
        f"SELECT {col} AS v, side, label, count(*) FROM sided_clock WHERE label IS NOT NULL GROUP BY ALL"
    ).fetchall()
    for v, side, label, n in labels:
        if v in out and side in out[v]:
            out[v][side].labels[str(label)] = int(n)
    return out


def _seg_name(f: str | None, v: Any) -> str:
    return ALL if f is None else f"{f}={v}"


def _blocks(
    con: duckdb.DuckDBPyConnection, col: str, f: str | None, segments: dict[str, SegmentEvidence], quantiles: list[float]
) -> None:
    """Runs of slices holding at least BLOCK_MIN subject records, per segment, with each side's
    latency quantiles over the block's slices: the latency ratio is read per block, as the
    shadow's is per stretch of wall-clock time (a burst of load moves a block, not one call)."""
    counts = con.execute(
        f"""SELECT {col} AS v, floor(clock / {SLICE_S})::BIGINT AS slice, count(*) FILTER (WHERE side = 'c')
            FROM sided_clock WHERE latency_ms IS NOT NULL GROUP BY ALL ORDER BY 1, 2"""
    ).fetchall()
    assign: list[tuple[Any, int, int]] = []
    # a block's time is the segment's own active clock: the seconds of the slices that held its
    # records before it. Stretches of equal time then hold equal shares of the segment's traffic,
    # also for a segment that comes and goes (night traffic of a recording spanning days), and
    # on live traffic the active clock is the wall clock
    active: dict[tuple[Any, int], float] = {}
    block = 0
    current: Any = object()
    acc = 0
    seen = 0
    for v, s, n_c in counts:
        if v != current:
            current, acc, seen = v, 0, 0
            block += 1
        assign.append((v, int(s), block))
        active.setdefault((v, block), seen * SLICE_S)
        seen += 1
        acc += int(n_c)
        if acc >= BLOCK_MIN:
            block, acc = block + 1, 0
    if not assign:
        return
    import pyarrow as pa

    con.register(
        "slice_blocks",
        pa.table(
            {"v": pa.array([a[0] for a in assign], pa.string()), "slice": [a[1] for a in assign], "blk": [a[2] for a in assign]}
        ),
    )
    qs = "[" + ", ".join(repr(q) for q in quantiles) + "]"
    on_v = "TRUE" if col == "NULL" else f"sb.v IS NOT DISTINCT FROM t.{col}"
    rows = con.execute(
        # each side's quantile from as many records as the other side has in the block: a P95
        # of 200 records sits below one of 4,000 (a sample quantile's bias shrinks with its
        # size), which at a 5 % canary read every canary as faster than it is, and a canary
        # exactly at its margin was shown within in 7 % of runs instead of alpha's 1 %
        f"""WITH tagged AS (
                SELECT sb.v, sb.blk, t.side, t.event_time, t.latency_ms,
                       row_number() OVER (PARTITION BY sb.v, sb.blk, t.side ORDER BY hash(t.event_time, t.latency_ms)) AS rn,
                       count(*) FILTER (WHERE t.side = 'b') OVER (PARTITION BY sb.v, sb.blk) AS n_b,
                       count(*) FILTER (WHERE t.side = 'c') OVER (PARTITION BY sb.v, sb.blk) AS n_c
                FROM sided_clock t JOIN slice_blocks sb ON {on_v} AND sb.slice = floor(t.clock / {SLICE_S})::BIGINT
                WHERE t.latency_ms IS NOT NULL)
            SELECT v, blk, side, count(*), min(event_time), quantile_cont(latency_ms, {qs})
            FROM tagged WHERE rn <= least(n_b, n_c) GROUP BY ALL ORDER BY 1, 2"""
    ).fetchall()
    con.unregister("slice_blocks")
    per: dict[tuple[Any, int], dict[str, Any]] = {}
    for v, blk, side, n, _first, q in rows:
        k0 = _ACTIVE_EPOCH + timedelta(seconds=active[(v, blk)])
        m = per.setdefault((v, blk), {"n": 0, "calls": 0, "b_q": None, "c_q": None, "first_call": {"k0": k0}})
        m[f"{side}_q"] = list(q)
        if side == "c":
            m["n"] = m["calls"] = int(n)
    for (v, _), m in sorted(per.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        seg = segments.get(_seg_name(f, v))
        if seg is not None and m["b_q"] and m["c_q"] and m["n"] > 0:
            seg.blocks.append(m)
    for seg in segments.values():
        seg.blocks.sort(key=lambda m: m["first_call"]["k0"])


def _windows(
    con: duckdb.DuckDBPyConnection,
    col: str,
    f: str | None,
    segments: dict[str, SegmentEvidence],
    minutes: float,
    quantiles: list[float],
) -> None:
    """Tumbling windows of `minutes` of clock, per segment and side: the sustained checks ask
    whether an excess lasted the runbook's duration."""
    width = max(minutes, 1 / 60) * 60
    qs = "[" + ", ".join(repr(q) for q in quantiles) + "]"
    rows = con.execute(
        f"""SELECT {col} AS v, floor(clock / {width})::BIGINT AS w, side, count(*), count(*) FILTER (WHERE NOT ok),
                   quantile_cont(latency_ms, {qs})
            FROM sided_clock GROUP BY ALL ORDER BY 1, 2"""
    ).fetchall()
    per: dict[tuple[Any, int], dict[str, Any]] = {}
    for v, w, side, n, err, q in rows:
        m = per.setdefault(
            (v, w), {"minutes": minutes, "window_start": datetime(2000, 1, 1, tzinfo=UTC) + timedelta(seconds=w * width)}
        )
        m[f"{side}_n"], m[f"{side}_err"], m[f"{side}_q"] = int(n), int(err), q
    for (v, _), m in sorted(per.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        seg = segments.get(_seg_name(f, v))
        if seg is not None:
            seg.windows.append(m)


def _score_hists(con: duckdb.DuckDBPyConnection, col: str, f: str | None, segments: dict[str, SegmentEvidence]) -> None:
    """Each side's scores over equal-width bins of the reference's range (distribution distances)."""
    lo, hi, sd = con.execute(
        "SELECT min(score), max(score), stddev_samp(score) FROM sided_clock WHERE side = 'b'"
    ).fetchone() or (
        None,
        None,
        None,
    )
    if lo is None or hi is None:
        return
    width = (hi - lo) / SCORE_BINS if hi > lo else 1.0
    rows = con.execute(
        f"""SELECT {col} AS v, side, count(*),
                   least(greatest(floor((score - {lo}) / {width}), 0), {SCORE_BINS - 1})::INTEGER AS bin
            FROM sided_clock WHERE score IS NOT NULL GROUP BY ALL"""
    ).fetchall()
    for v, side, n, b in rows:
        seg = segments.get(_seg_name(f, v))
        if seg is None:
            continue
        if seg.score_hist is None:
            seg.score_hist = {"width": width, "b": np.zeros(SCORE_BINS), "c": np.zeros(SCORE_BINS), "sd_b": float(sd or 0.0)}
        seg.score_hist[side][int(b)] += int(n)


def feature_columns(con: duckdb.DuckDBPyConnection, names: Sequence[str]) -> None:
    """`sided_features`: each declared feature of each row's input, by side."""
    cols = ", ".join(f"json_extract(input, {literal('$.' + _json_key(n))}) AS f{i}" for i, n in enumerate(names))
    con.execute(f"CREATE OR REPLACE TEMP VIEW sided_features AS SELECT side{', ' + cols if cols else ''} FROM sided_clock")


def source_complete(manifests: list[dict[str, Any]]) -> bool:
    """Every worker read its whole source (a recording or a window), by its newest manifest."""
    last = newest_manifests(manifests)
    return bool(last) and all(m.get("run_meta", {}).get("served_complete") for m in last.values())
