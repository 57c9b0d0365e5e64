"""Open a run's stores for reading, and build the `pairs` relation the checks aggregate.

DuckDB lets one process write a file or many read it, never both: the judge reads either
through the writer's own connection (the replay's checkpoint hook) or, when no writer holds the
files, by attaching every worker's store read-only into one in-memory database. Rows that two
workers both stored during a consumer-group rebalance are deduplicated by their coordinates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import orjson

from diff.exports import open_exports
from schemas.errors import RunNotFound, StoreError
from schemas.layout import EXPORT_KEYS, RunLayout
from schemas.records import BASELINE, BASELINE_REPEAT, candidate_variant

TABLES = ("requests", "outputs", "dead_letters", "checkpoints", "run_meta", "quota_samples")
_KEYS = {
    **EXPORT_KEYS,
    "checkpoints": "source, part",
    "run_meta": "key",
}


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def run_dir(home: Path, run_id: str) -> Path:
    return home / run_id


def store_files(home: Path, run_id: str) -> list[Path]:
    files = sorted(run_dir(home, run_id).glob("store-*.duckdb"))
    if not files:
        raise RunNotFound(f"run {run_id!r} not found under {home} (no store-*.duckdb)")
    return files


def open_run(
    home: Path, run_id: str, memory_limit: str = "2GB", source: Literal["auto", "stores", "exports"] = "auto"
) -> duckdb.DuckDBPyConnection:
    """An in-memory connection over the run's data: "stores" attaches every worker's store
    read-only (StoreError when a writer holds one); "exports" reads the writers' checkpoint
    exports (diff/exports.py), which a reader may take while they write; "auto" reads the stores
    when no writer holds them, else the exports."""
    if source == "exports":
        return open_exports(home, run_id, memory_limit)
    try:
        return _open_stores(home, run_id, memory_limit)
    except (StoreError, RunNotFound):
        if source == "auto" and RunLayout(home, run_id).export_folders():
            return open_exports(home, run_id, memory_limit)
        raise


def _open_stores(home: Path, run_id: str, memory_limit: str) -> duckdb.DuckDBPyConnection:
    files = store_files(home, run_id)
    # a bounded budget: DuckDB spills to disk past it instead of taking 80% of the machine
    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(home / run_id / ".tmp")})
    for i, f in enumerate(files):
        try:
            con.execute(f"ATTACH {literal(str(f))} AS s{i} (READ_ONLY)")
        except duckdb.Error as err:
            con.close()
            raise StoreError(f"cannot read {f} (a writer may hold it): {err}") from err
    for t in TABLES:
        if t == "quota_samples" and not _in_every_store(con, t, len(files)):
            # stores written before quotas were bottom-k samples: no hashes, nothing to filter
            con.execute(f'CREATE TABLE {t} (source VARCHAR, part INTEGER, "offset" BIGINT, quota VARCHAR, sample_hash UBIGINT)')
            continue
        if len(files) == 1:
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM s0.{t}")
        else:
            union = " UNION ALL BY NAME ".join(f"SELECT * FROM s{i}.{t}" for i in range(len(files)))
            con.execute(f"CREATE VIEW {t} AS SELECT DISTINCT ON ({_KEYS[t]}) * FROM ({union})")
    return con


def _in_every_store(con: duckdb.DuckDBPyConnection, table: str, stores: int) -> bool:
    (n,) = con.execute(
        "SELECT count(DISTINCT database_name) FROM duckdb_tables() WHERE table_name = ? AND database_name LIKE 's%'", [table]
    ).fetchone() or (0,)
    return int(n) == stores


def keep_bottom_k(con: duckdb.DuckDBPyConnection, info: RunInfo) -> None:
    """Drop from `pairs` the quota samples that are not among their segment's k smallest hashes
    (replay/sampling.py): a request stored while among the k smallest so far, and pushed out by
    a smaller one later, is not part of the segment's sample."""
    quotas: dict[str, int] = info.config.get("sampling", {}).get("quotas", {})
    if not quotas:
        return
    (hashes,) = con.execute("SELECT count(*) FROM quota_samples").fetchone() or (0,)
    if not hashes:  # a store written before quotas were bottom-k samples
        return
    con.execute('CREATE OR REPLACE TEMP TABLE quota_kept (source VARCHAR, part INTEGER, "offset" BIGINT)')
    for q, k in sorted(quotas.items()):
        field, _, value = q.partition("=")
        (n_rate,) = con.execute(
            f"SELECT count(*) FROM requests WHERE sampled_reason = 'rate' AND segments.{ident(field)} = ?", [value]
        ).fetchone() or (0,)
        con.execute(
            """INSERT INTO quota_kept SELECT source, part, "offset" FROM quota_samples WHERE quota = ?
               ORDER BY sample_hash, source, part, "offset" LIMIT ?""",
            [q, max(0, int(k) - int(n_rate))],
        )
    con.execute(
        """DELETE FROM pairs WHERE sampled_reason = 'quota' AND NOT EXISTS (
             SELECT 1 FROM quota_kept k WHERE k.source = pairs.source AND k.part = pairs.part AND k."offset" = pairs."offset")"""
    )


def literal(s: str) -> str:
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    config: dict[str, Any]
    meta: dict[str, Any]

    @property
    def candidates(self) -> list[dict[str, Any]]:
        return list(self.config.get("candidates", []))

    @property
    def segment_fields(self) -> list[str]:
        seg = self.config.get("segments", {})
        out = list(seg.get("fields", []))
        if seg.get("hour_buckets"):
            out.append(seg["hour_buckets"].get("name", "daypart"))
        return out

    @property
    def combinations(self) -> list[list[str]]:
        return [list(c) for c in self.config.get("segments", {}).get("combinations", [])]

    @property
    def numeric(self) -> list[str]:
        return list(self.config.get("features", {}).get("numeric", []))

    @property
    def categorical(self) -> list[str]:
        return list(self.config.get("features", {}).get("categorical", []))


def run_info(con: duckdb.DuckDBPyConnection) -> RunInfo:
    meta = {k: orjson.loads(v) for k, v in con.execute("SELECT key, value FROM run_meta").fetchall()}
    if "config" not in meta:
        raise StoreError("store has no run config in run_meta (not written by shadowdiff?)")
    cfg = orjson.loads(meta["config"]) if isinstance(meta["config"], str) else meta["config"]
    return RunInfo(str(meta.get("run_id", cfg["run"]["id"])), cfg, meta)


@dataclass(frozen=True)
class Pooling:
    """How rare segment values are pooled as '(other)': values rarer than `min_share` of the
    run's requests, and all but the `max_values` most frequent."""

    max_values: int = 50
    min_share: float = 0.01


@dataclass(frozen=True)
class BuiltPairs:
    seg_exprs: list[str]  # segment expressions over `requests r`, for queries that need no outputs
    pooled: dict[str, dict[str, Any]]  # field -> {"values": [...], "distinct": k, "requests": n}
    duplicates: int = 0  # stored requests whose request id an earlier one already had (kept out of `pairs`)


OTHER = "(other)"


def _segment_exprs(con: duckdb.DuckDBPyConnection, fields: list[str], pooling: Pooling) -> BuiltPairs:
    seg_exprs: list[str] = []
    pooled: dict[str, dict[str, Any]] = {}
    for f in fields:
        raw = f"coalesce(r.segments.{ident(f)}, '(missing)')"
        counts = con.execute(f"SELECT {raw} AS v, count(*) AS n FROM requests r GROUP BY 1 ORDER BY n DESC, v").fetchall()
        total = sum(int(n) for _, n in counts)
        keep = [v for v, n in counts[: pooling.max_values] if n >= pooling.min_share * total]
        rare = [(v, int(n)) for v, n in counts if v not in set(keep)]
        if not rare:
            seg_exprs.append(f"{raw} AS {ident('seg_' + f)}")
            continue
        pooled[f] = {
            "values": [str(v) for v, _ in rare[:50]],
            "distinct": len(rare),
            "requests": sum(n for _, n in rare),
        }
        kept = ", ".join(literal(str(v)) for v in keep) or "NULL"
        seg_exprs.append(f"CASE WHEN {raw} IN ({kept}) THEN {raw} ELSE '{OTHER}' END AS {ident('seg_' + f)}")
    return BuiltPairs(seg_exprs, pooled)


def build_pairs(
    con: duckdb.DuckDBPyConnection, info: RunInfo, candidate: str, segment_fields: list[str], pooling: Pooling
) -> BuiltPairs:
    """Materialise `pairs`: one row per sampled request with baseline, candidate and repeat
    outputs side by side, and segment values (rare values pooled as '(other)')."""
    built = _segment_exprs(con, segment_fields, pooling)
    # the judge and the report's charts ask for the same pairs on one connection: build once
    (n_requests,) = con.execute("SELECT count(*) FROM requests").fetchone() or (0,)
    key = repr((candidate, built.seg_exprs, n_requests))
    try:
        have = con.execute("SELECT key, duplicates FROM pairs_key").fetchone()
    except duckdb.CatalogException:
        have = None
    if have is not None and have[0] == key:
        return BuiltPairs(built.seg_exprs, built.pooled, int(have[1]))
    # a request sent twice (producer retries) is one pair: the first stored copy counts
    (distinct,) = con.execute("SELECT count(DISTINCT request_id) FROM requests").fetchone() or (0,)
    built = BuiltPairs(built.seg_exprs, built.pooled, int(n_requests) - int(distinct))
    source = (
        'requests QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY source, part, "offset") = 1'
        if built.duplicates
        else "requests"
    )
    segs = (", ".join(built.seg_exprs) + ",") if built.seg_exprs else ""
    # stores and exports written before calls were timed have no called_at
    timed = "called_at" in {name for (name, *_) in con.execute("DESCRIBE outputs").fetchall()}
    called_at = "called_at" if timed else "NULL::TIMESTAMPTZ"
    con.execute("DROP TABLE IF EXISTS pairs")
    # one pass over the outputs, pivoted to a row per request, then one join: three joins of
    # the outputs (one per variant) left DuckDB to guess their sizes, and on tables without a
    # key it built its hash tables on the wide side and ran out of memory at 5M pairs
    con.execute(
        f"""CREATE TEMP TABLE pairs AS
        WITH o AS (
          SELECT source, part, "offset",
                 any_value(score) FILTER (WHERE variant = $base) AS b_score,
                 any_value(label) FILTER (WHERE variant = $base) AS b_label,
                 any_value(latency_ms) FILTER (WHERE variant = $base) AS b_lat,
                 any_value(error_class) FILTER (WHERE variant = $base) AS b_err,
                 any_value(score) FILTER (WHERE variant = $cand) AS c_score,
                 any_value(label) FILTER (WHERE variant = $cand) AS c_label,
                 any_value(latency_ms) FILTER (WHERE variant = $cand) AS c_lat,
                 any_value(error_class) FILTER (WHERE variant = $cand) AS c_err,
                 any_value({called_at}) FILTER (WHERE variant = $cand) AS called_at,
                 any_value(score) FILTER (WHERE variant = $rep) AS r_score,
                 any_value(label) FILTER (WHERE variant = $rep) AS r_label,
                 any_value(error_class) FILTER (WHERE variant = $rep) AS r_err,
                 bool_or(variant = $rep) AS has_repeat,
                 bool_or(variant = $cand) AS has_candidate
          FROM outputs WHERE variant IN ($cand, $base, $rep) GROUP BY source, part, "offset")
        SELECT r.source, r.part, r."offset", r.request_id, r.event_time, r.sampled_reason,
               r.feature_version, {segs}
               o.b_score, o.b_label, o.b_lat, o.b_err, o.c_score, o.c_label, o.c_lat, o.c_err, o.called_at,
               o.r_score, o.r_label, o.r_err, o.has_repeat
        FROM (SELECT * FROM {source}) r
        JOIN o ON o.source = r.source AND o.part = r.part AND o."offset" = r."offset"
        WHERE o.has_candidate""",
        {"cand": candidate_variant(candidate), "base": BASELINE, "rep": BASELINE_REPEAT},
    )
    keep_bottom_k(con, info)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE pairs_key AS SELECT $key AS key, $dups AS duplicates",
        {"key": key, "dups": built.duplicates},
    )
    return built
