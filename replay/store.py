"""The run writer's DuckDB store: one file per writer, batched Arrow inserts (executemany is ~30x
slower here), rows keyed by source coordinates and inserted with INSERT OR IGNORE, and the
partition checkpoints written in the same transaction as the rows they cover."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from replay.messages import DeadLetter, Output, Position, Request
from schemas import STORE_SCHEMA_VERSION, store_ddl
from schemas.config import RunConfig
from schemas.errors import StoreError

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
        self.seg_fields = cfg.segments.names()
        self.num = list(cfg.features.numeric)
        self.cat = list(cfg.features.categorical)
        self._check_compatible()
        self.positions: dict[tuple[str, int], Position] = {
            (s, p): Position(o, c, n)
            for s, p, o, c, n in self.con.execute(
                "SELECT source, part, next_offset, consumed, sampled FROM checkpoints"
            ).fetchall()
        }

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
        with self.con.cursor() as cur:
            cur.execute("BEGIN")
            for k, v in items.items():
                cur.execute("INSERT OR REPLACE INTO run_meta VALUES (?, ?)", [k, orjson.dumps(v, default=str).decode()])
            cur.execute("COMMIT")

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
        self.write_meta(meta)

    def checkpoints(self) -> dict[tuple[str, int], int]:
        return {k: p.next_offset for k, p in self.positions.items()}

    def quota_counts(self, quotas: Sequence[str]) -> dict[str, int]:
        """Samples already stored per quota 'field=value' (so a restart does not re-fill them)."""
        out: dict[str, int] = {}
        for q in quotas:
            field, _, value = q.partition("=")
            (n,) = self.con.execute(f"SELECT count(*) FROM requests WHERE segments.{_ident(field)} = ?", [value]).fetchone() or (
                0,
            )
            out[q] = int(n)
        return out

    # -- the batch write --------------------------------------------------------------------

    def _requests_table(self, reqs: Sequence[Request]) -> pa.Table:
        seg_names = self.seg_fields or ["_"]
        segs = pa.StructArray.from_arrays(
            [pa.array([r.segments.get(f) for r in reqs], pa.string()) for f in seg_names], names=seg_names
        )
        # one C-level transpose instead of a Python pass per feature
        columns = list(zip(*(r.features for r in reqs), strict=True)) if self.num or self.cat else []
        feat_arrays = [pa.array(columns[i], pa.float64()) for i in range(len(self.num))]
        feat_arrays += [pa.array(columns[len(self.num) + i], pa.string()) for i in range(len(self.cat))]
        feat_names = self.num + self.cat
        if not feat_names:
            feat_arrays, feat_names = [pa.nulls(len(reqs), pa.string())], ["_"]
        feats = pa.StructArray.from_arrays(feat_arrays, names=feat_names)
        return pa.table(
            {
                "source": pa.array([r.source for r in reqs], pa.string()),
                "part": pa.array([r.part for r in reqs], pa.int32()),
                "offset": pa.array([r.offset for r in reqs], pa.int64()),
                "request_id": pa.array([r.request_id for r in reqs], pa.string()),
                "event_time": pa.array([r.event_time_us for r in reqs], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                "sampled_reason": pa.array([r.sampled_reason for r in reqs], pa.string()),
                "segments": segs,
                "features": feats,
                "model_input": pa.array([orjson.dumps(r.model_input).decode() for r in reqs], pa.string()),
                "feature_version": pa.array([r.feature_version for r in reqs], pa.string()),
            }
        )

    @staticmethod
    def _outputs_table(rows: Sequence[tuple[Request, Output]]) -> pa.Table:
        def js(v: Any) -> str | None:
            return None if v is None else orjson.dumps(v, default=str).decode()

        return pa.table(
            {
                "source": pa.array([r.source for r, _ in rows], pa.string()),
                "part": pa.array([r.part for r, _ in rows], pa.int32()),
                "offset": pa.array([r.offset for r, _ in rows], pa.int64()),
                "variant": pa.array([o.variant for _, o in rows], pa.string()),
                "model_version": pa.array([o.model_version for _, o in rows], pa.string()),
                "score": pa.array([o.score for _, o in rows], pa.float64()),
                "label": pa.array([o.label for _, o in rows], pa.string()),
                "output": pa.array([js(o.output) for _, o in rows], pa.string()),
                "latency_ms": pa.array([o.latency_ms for _, o in rows], pa.float64()),
                "error_class": pa.array([o.error_class for _, o in rows], pa.string()),
                "error_detail": pa.array([o.error_detail for _, o in rows], pa.string()),
                "attempts": pa.array([o.attempts for _, o in rows], pa.int32()),
            }
        )

    @staticmethod
    def _dead_table(dead: Sequence[DeadLetter]) -> pa.Table:
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

    def write_batch(
        self,
        requests: Sequence[Request],
        outputs: Sequence[tuple[Request, Output]],
        dead: Sequence[DeadLetter],
        positions: Mapping[tuple[str, int], Position],
    ) -> None:
        """Store one batch and its checkpoints atomically; after this returns, the batch is
        durable and the source offsets may be committed."""
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN")
            if requests:
                cur.register("req_tbl", self._requests_table(requests))
                inserted: pa.Table = cur.sql(
                    'INSERT OR IGNORE INTO requests BY NAME SELECT * FROM req_tbl RETURNING source, part, "offset"'
                ).to_arrow_table()
                if outputs and inserted.num_rows:
                    cur.register("out_tbl", self._outputs_table(outputs))
                    if inserted.num_rows == len(requests):
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
            if dead:
                cur.register("dead_tbl", self._dead_table(dead))
                cur.execute("INSERT OR IGNORE INTO dead_letters BY NAME SELECT * FROM dead_tbl")
            for (src, part), pos in positions.items():
                cur.execute(
                    "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                    [src, part, pos.next_offset, pos.consumed, pos.sampled],
                )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()
        self.positions.update(positions)

    def close(self) -> None:
        self.con.close()
