"""The run writer's DuckDB store: one file per writer, batched Arrow inserts (executemany is ~30x
slower here), rows keyed by source coordinates and inserted with INSERT OR IGNORE, and the
partition checkpoints written in the same transaction as the rows they cover."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from shadowdiff.replay.messages import Position
from shadowdiff.schemas import STORE_SCHEMA_VERSION, store_ddl
from shadowdiff.schemas.config import RunConfig
from shadowdiff.schemas.envelope import EVENT_TIME_US, OFFSET, PART, REQUEST_ID, SAMPLED_REASON, SOURCE, Row, RowLayout
from shadowdiff.schemas.errors import StoreError
from shadowdiff.schemas.records import DeadLetter, source_complete_key
from shadowdiff.schemas.rows import requests_arrow

WRITER_MEMORY = "64MB"  # DuckDB buffer budget of a replay writer: a 1M-message replay peaks ~340 MB RSS
WRITER_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "memory_limit": WRITER_MEMORY,
    # fewer synchronous checkpoints inside the loop (each one stalls a commit for tens of ms)
    "checkpoint_threshold": "256MB",
    # the writer's inserts are small and serial: a second DuckDB thread only competes with the
    # Kafka consumer for the cores (measured: 5% sampling 0.6-0.9x -> 0.83-1.05x of raw consume)
    "threads": 1,
}
_EMPTY_STRUCT = 'STRUCT("_" VARCHAR)'  # DuckDB has no empty STRUCT


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def struct_types(cfg: RunConfig) -> tuple[str, str]:
    segs = cfg.segments.names()
    seg_t = f"STRUCT({', '.join(f'{_ident(s)} VARCHAR' for s in segs)})" if segs else _EMPTY_STRUCT
    cols = [f"{_ident(n)} DOUBLE" for n in cfg.features.numeric]
    cols += [f"{_ident(n)} VARCHAR" for n in cfg.features.categorical]
    feat_t = f"STRUCT({', '.join(cols)})" if cols else _EMPTY_STRUCT
    return seg_t, feat_t


def store_path(cfg: RunConfig) -> Path:
    return cfg.run.home / cfg.run.id / f"store-{cfg.run.worker}.duckdb"


def config_digest(cfg: RunConfig) -> str:
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()


def _offset_spans(requests: pa.Table) -> dict[tuple[str, int], tuple[int, int]]:
    """(lowest, highest) request offset per (source, part) of a batch."""
    if not requests.num_rows:
        return {}
    spans = requests.group_by(["source", "part"]).aggregate([("offset", "min"), ("offset", "max")])
    return {
        (src, part): (low, high)
        for src, part, low, high in zip(
            *(spans.column(c).to_pylist() for c in ("source", "part", "offset_min", "offset_max")), strict=True
        )
    }


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection, what: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor inside one transaction, committed when the block ends; on any error rolled
    back, and a DuckDB error raised as StoreError ("storing `what` failed")."""
    cur = con.cursor()
    try:
        cur.execute("BEGIN")
        yield cur
        cur.execute("COMMIT")
    except BaseException as err:
        # a failed COMMIT (a full disk) has already ended the transaction: a ROLLBACK then
        # fails too, and its error must not hide the cause
        with contextlib.suppress(duckdb.Error):
            cur.execute("ROLLBACK")
        if isinstance(err, duckdb.Error):
            raise StoreError(f"storing {what} failed, nothing of it was committed: {err}") from err
        raise
    finally:
        cur.close()


def store_dead_and_checkpoints(
    cur: duckdb.DuckDBPyConnection, dead: Sequence[DeadLetter], positions: Mapping[tuple[str, int], Position]
) -> None:
    """A batch's dead letters and the partition checkpoints after it, in the caller's transaction."""
    if dead:
        cur.register("dead_tbl", dead_letters_table(dead))
        cur.execute("INSERT OR IGNORE INTO dead_letters BY NAME SELECT * FROM dead_tbl")
    if positions:
        # one statement for every partition: each statement costs DuckDB a few ms to plan,
        # which a batch spread over many partitions would pay once per partition
        keys = list(positions)
        table = pa.table(
            {
                "source": pa.array([s for s, _ in keys], pa.string()),
                "part": pa.array([p for _, p in keys], pa.int32()),
                "next_offset": pa.array([positions[k].next_offset for k in keys], pa.int64()),
                "consumed": pa.array([positions[k].consumed for k in keys], pa.int64()),
                "sampled": pa.array([positions[k].sampled for k in keys], pa.int64()),
            }
        )
        cur.register("checkpoints_tbl", table)
        cur.execute("INSERT OR REPLACE INTO checkpoints BY NAME SELECT * FROM checkpoints_tbl")


def stored_positions(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, int], Position]:
    """Each partition's checkpoint as the store recorded it."""
    rows = con.execute("SELECT source, part, next_offset, consumed, sampled FROM checkpoints").fetchall()
    return {(s, p): Position(o, c, n) for s, p, o, c, n in rows}


def write_meta(con: duckdb.DuckDBPyConnection, items: Mapping[str, Any]) -> None:
    """`run_meta` entries (JSON values), in one transaction."""
    with con.cursor() as cur:
        cur.execute("BEGIN")
        for k, v in items.items():
            cur.execute("INSERT OR REPLACE INTO run_meta VALUES (?, ?)", [k, orjson.dumps(v, default=str).decode()])
        cur.execute("COMMIT")


def dead_letters_table(dead: Sequence[DeadLetter]) -> pa.Table:
    now = datetime.now(UTC)
    return pa.table(
        {
            "source": pa.array([d.source for d in dead], pa.string()),
            "part": pa.array([d.part for d in dead], pa.int32()),
            "offset": pa.array([d.offset for d in dead], pa.int64()),
            "reason": pa.array([d.reason for d in dead], pa.string()),
            "detail": pa.array([d.detail for d in dead], pa.string()),
            "raw_key": pa.array([d.raw_key for d in dead], pa.binary()),
            "raw_value": pa.array([d.raw_value for d in dead], pa.binary()),
            "received_at": pa.array([now] * len(dead), pa.timestamp("us", tz="UTC")),
        }
    )


class StoreWriter:
    """Owns the read-write connection of one store file (DuckDB allows one writing process)."""

    def __init__(self, cfg: RunConfig, path: Path | None = None) -> None:
        self.cfg = cfg
        self.path = path or store_path(cfg)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # a small buffer budget keeps a long replay's memory flat: written pages are on disk
            # after each checkpoint and need not stay cached (DuckDB's default is 80% of RAM)
            self.con = duckdb.connect(str(self.path), config=WRITER_CONFIG)
        except duckdb.Error as err:
            raise StoreError(f"cannot open store {self.path}: {err}") from err
        seg_t, feat_t = struct_types(cfg)
        self.con.execute(store_ddl(seg_t, feat_t))
        self.layout = RowLayout(tuple(cfg.segments.names()), tuple(cfg.features.numeric), tuple(cfg.features.categorical))
        self._check_compatible()
        # highest stored request offset per partition: a batch entirely above it is new, and
        # skips INSERT OR IGNORE ... RETURNING, which costs nearly twice as much a request
        self._stored_max: dict[tuple[str, int], int] = {
            (src, part): int(top)
            for src, part, top in self.con.execute('SELECT source, part, max("offset") FROM requests GROUP BY ALL').fetchall()
        }
        self.positions = stored_positions(self.con)

    def _check_compatible(self) -> None:
        row = self.con.execute("SELECT value FROM run_meta WHERE key = 'store_schema_version'").fetchone()
        if row is not None and int(orjson.loads(row[0])) != STORE_SCHEMA_VERSION:
            raise StoreError(f"{self.path} has store schema {row[0]}, this shadowdiff writes {STORE_SCHEMA_VERSION}")
        row = self.con.execute("SELECT value FROM run_meta WHERE key = 'config_digest'").fetchone()
        if row is not None and orjson.loads(row[0]) != config_digest(self.cfg):
            prev = self.con.execute("SELECT value FROM run_meta WHERE key = 'config'").fetchone()
            prev_cfg = orjson.loads(orjson.loads(prev[0])) if prev else {}
            if prev_cfg.get("features") != self.cfg.features.model_dump() or prev_cfg.get("segments", {}).get("fields") != list(
                self.cfg.segments.fields
            ):
                raise StoreError(f"{self.path} was written with other features/segments; use a new run id")

    def write_meta(self, items: Mapping[str, Any]) -> None:
        write_meta(self.con, items)

    def start_meta(self, versions: Mapping[str, Any]) -> None:
        now = datetime.now(UTC).isoformat()
        have = {k for (k,) in self.con.execute("SELECT key FROM run_meta").fetchall()}
        meta: dict[str, Any] = {
            "store_schema_version": STORE_SCHEMA_VERSION,
            "run_id": self.cfg.run.id,
            "worker": self.cfg.run.worker,
            "config": self.cfg.model_dump_json(),
            "config_digest": config_digest(self.cfg),
            "versions": dict(versions),
            "last_started_at": now,
        }
        if "first_started_at" not in have:
            meta["first_started_at"] = now
        meta[source_complete_key(self.cfg.run.worker)] = False  # a restarted run reads on
        self.write_meta(meta)

    def checkpoints(self) -> dict[tuple[str, int], int]:
        return {k: p.next_offset for k, p in self.positions.items()}

    def quota_state(self, quotas: Sequence[str], every_value_of: Sequence[str] = ()) -> dict[str, tuple[int, list[int]]]:
        """Per quota 'field=value': the rate samples of that segment stored, and the hashes of its
        quota samples, smallest first (a restart resumes the bottom-k where it was). Quotas of
        the fields `every_value_of` (`min_per_segment`) are those of every value stored."""
        names = list(quotas)
        for field in every_value_of:
            rows = self.con.execute(
                f"SELECT DISTINCT segments.{_ident(field)} FROM requests WHERE segments.{_ident(field)} IS NOT NULL ORDER BY 1"
            ).fetchall()
            names += [q for (v,) in rows if (q := f"{field}={v}") not in names]
        out: dict[str, tuple[int, list[int]]] = {}
        for q in names:
            field, _, value = q.partition("=")
            (n,) = self.con.execute(
                f"SELECT count(*) FROM requests WHERE sampled_reason = 'rate' AND segments.{_ident(field)} = ?", [value]
            ).fetchone() or (0,)
            rows = self.con.execute("SELECT sample_hash FROM quota_samples WHERE quota = ? ORDER BY 1", [q]).fetchall()
            hashes = [h for (h,) in rows]
            out[q] = (int(n), hashes)
        return out

    # -- the batch write --------------------------------------------------------------------

    def requests_table(self, rows: Sequence[Row]) -> pa.Table:
        """Decoded request rows (see schemas.envelope.RowLayout) as an Arrow table in the requests
        table's layout."""
        L = self.layout
        # one C-level transpose instead of a Python pass per column
        cols: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [()] * L.width
        seg_names = list(L.segment_names) or ["_"]
        seg_cols = cols[L.segments] or [[None] * len(rows)]
        segs = pa.StructArray.from_arrays([pa.array(c, pa.string()) for c in seg_cols], names=seg_names)
        feat_cols = cols[L.features]
        n_num = len(L.numeric)
        feat_arrays = [pa.array(c, pa.float64()) for c in feat_cols[:n_num]]
        feat_arrays += [pa.array(c, pa.string()) for c in feat_cols[n_num:]]
        feat_names = [*L.numeric, *L.categorical]
        if not feat_names:
            feat_arrays, feat_names = [pa.nulls(len(rows), pa.string())], ["_"]
        dumps = orjson.dumps
        return requests_arrow(
            source=cols[SOURCE],
            part=cols[PART],
            offset=cols[OFFSET],
            request_id=cols[REQUEST_ID],
            event_time=pa.array(cols[EVENT_TIME_US], pa.int64()),
            sampled_reason=cols[SAMPLED_REASON],
            segments=segs,
            features=pa.StructArray.from_arrays(feat_arrays, names=feat_names),
            model_input=[dumps(m).decode() for m in cols[L.model_input]],
            feature_version=cols[L.feature_version],
        )

    def write_batch(
        self,
        requests: pa.Table,
        outputs: pa.Table,
        dead: Sequence[DeadLetter],
        positions: Mapping[tuple[str, int], Position],
        quota_hashes: Sequence[tuple[str, int, int, str, int]] = (),
    ) -> None:
        """Store one batch and its checkpoints atomically; after this returns, the batch is
        durable and the source offsets may be committed. `requests` has the requests table's
        columns; `outputs` the outputs table's, keyed by the same coordinates."""
        spans = _offset_spans(requests)
        all_new = all(low > self._stored_max.get(k, -1) for k, (low, _) in spans.items())
        with transaction(self.con, "a batch") as cur:
            if requests.num_rows and all_new:
                # the primary key still guards: a duplicate here would fail the batch, not pass
                cur.register("req_tbl", requests)
                cur.execute("INSERT INTO requests BY NAME SELECT * FROM req_tbl")
                if outputs.num_rows:
                    cur.register("out_tbl", outputs)
                    cur.execute("INSERT INTO outputs BY NAME SELECT * FROM out_tbl")
            elif requests.num_rows:
                cur.register("req_tbl", requests)
                inserted: pa.Table = cur.sql(
                    'INSERT OR IGNORE INTO requests BY NAME SELECT * FROM req_tbl RETURNING source, part, "offset"'
                ).to_arrow_table()
                if outputs.num_rows and inserted.num_rows:
                    cur.register("out_tbl", outputs)
                    if inserted.num_rows == requests.num_rows:
                        cur.execute("INSERT INTO outputs BY NAME SELECT * FROM out_tbl")
                    else:
                        # part of this batch was stored before (a re-replay): only the new
                        # requests get their outputs, so no pair is ever stored twice
                        cur.register("inserted_keys", inserted)
                        cur.execute(
                            """INSERT INTO outputs BY NAME SELECT o.* FROM out_tbl o
                               SEMI JOIN inserted_keys i
                               ON o.source = i.source AND o.part = i.part AND o."offset" = i."offset"
                            """
                        )
            if quota_hashes:
                cols = list(zip(*quota_hashes, strict=True))
                names = ["source", "part", "offset", "quota", "sample_hash"]
                types = [pa.string(), pa.int32(), pa.int64(), pa.string(), pa.uint64()]
                cur.register("quota_tbl", pa.table([pa.array(c, t) for c, t in zip(cols, types, strict=True)], names=names))
                cur.execute("INSERT OR IGNORE INTO quota_samples BY NAME SELECT * FROM quota_tbl")
            store_dead_and_checkpoints(cur, dead, positions)
        self.positions.update(positions)
        for k, (_, high) in spans.items():
            self._stored_max[k] = max(high, self._stored_max.get(k, -1))

    def close(self) -> None:
        self.con.close()
