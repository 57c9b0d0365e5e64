"""The outcome worker: reads outcome records (a Kafka topic or window, or a recording) into the
run's outcome store, `outcomes-<worker>.duckdb`, and publishes what it stored as checkpoint
exports under `<run>/outcome-exports/<worker>/` for the judge, which joins them to the pairs by
request id (diff/outcomes.py).

Exactly-once effect, as the replay: each batch's rows, dead letters and partition checkpoints
are committed in one DuckDB transaction, and the source's offsets are committed only after it;
rows are keyed by source coordinates (INSERT OR IGNORE), so a crash between the two commits
re-reads a batch that then adds nothing. A restart resumes from the store's checkpoints.
Outcomes need no pair to be stored: one that arrives before its request's pair is joined once
the pair is there, one for a request the run never stored is reported by the judge."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from shadowdiff.replay.exports import Exporter
from shadowdiff.replay.formats import payload_reader
from shadowdiff.replay.messages import Position
from shadowdiff.replay.sources import open_source
from shadowdiff.replay.store import WRITER_CONFIG, store_dead_and_checkpoints, stored_positions, transaction, write_meta
from shadowdiff.schemas import OUTCOME_STORE_SCHEMA_VERSION, outcome_store_ddl
from shadowdiff.schemas.config import OutcomeSpec, RunConfig
from shadowdiff.schemas.errors import ConfigError, StoreError
from shadowdiff.schemas.layout import OUTCOME_EXPORT_TABLES, RunLayout
from shadowdiff.schemas.outcomes import OutcomeCodec, OutcomeRow
from shadowdiff.schemas.records import DeadLetter

log = logging.getLogger(__name__)

OUTCOME_EXPORTS = "outcome-exports"  # the folder under the run (schemas/layout.py)
OUTCOMES_COMPLETE = "outcomes_complete"  # run_meta: the worker read its whole source


class OutcomeWriter:
    """The read-write connection of one outcome store file."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.path = RunLayout(cfg.run.home, cfg.run.id).outcome_store(cfg.run.worker)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path), config=WRITER_CONFIG)
        except duckdb.Error as err:
            raise StoreError(f"cannot open outcome store {self.path}: {err}") from err
        self.con.execute(outcome_store_ddl())
        row = self.con.execute("SELECT value FROM run_meta WHERE key = 'store_schema_version'").fetchone()
        if row is not None and int(orjson.loads(row[0])) != OUTCOME_STORE_SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has outcome store schema {row[0]}, this shadowdiff writes {OUTCOME_STORE_SCHEMA_VERSION}"
            )
        self.positions = stored_positions(self.con)

    def write_meta(self, items: dict[str, Any]) -> None:
        write_meta(self.con, items)

    def checkpoints(self) -> dict[tuple[str, int], int]:
        return {k: p.next_offset for k, p in self.positions.items()}

    def write_batch(self, rows: list[OutcomeRow], dead: list[DeadLetter], positions: dict[tuple[str, int], Position]) -> int:
        """Store one batch with its checkpoints atomically; returns the outcome rows newly stored
        (a re-read batch stores none)."""
        now = datetime.now(UTC)
        stored = 0
        with transaction(self.con, "a batch of outcomes") as cur:
            if rows:
                cols = list(zip(*rows, strict=True))
                table = pa.table(
                    {
                        "source": pa.array(cols[0], pa.string()),
                        "part": pa.array(cols[1], pa.int32()),
                        "offset": pa.array(cols[2], pa.int64()),
                        "request_id": pa.array(cols[3], pa.string()),
                        "label": pa.array(cols[4], pa.string()),
                        "value": pa.array(cols[5], pa.float64()),
                        "observed_at": pa.array(cols[6], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                        "received_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
                    }
                )
                cur.register("outcome_tbl", table)
                inserted = cur.execute('INSERT OR IGNORE INTO outcomes BY NAME SELECT * FROM outcome_tbl RETURNING "offset"')
                stored = len(inserted.fetchall())
            store_dead_and_checkpoints(cur, dead, positions)
        self.positions.update(positions)
        return stored

    def close(self) -> None:
        self.con.close()


@dataclass
class OutcomeStats:
    consumed: int = 0
    stored: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    complete: bool = False  # the source was read to its end (a recording or a window)

    def summary(self) -> dict[str, Any]:
        secs = max((self.finished or time.monotonic()) - self.started, 1e-9)
        return {
            "consumed": self.consumed,
            "stored": self.stored,
            "dead_letters": dict(self.dead_letters),
            "batches": self.batches,
            "seconds": round(secs, 3),
            "complete": self.complete,
        }


def outcome_spec(cfg: RunConfig) -> OutcomeSpec:
    if cfg.outcomes is None:
        raise ConfigError("outcomes", ["the run config has no [outcomes] section: where do the outcome records come from?"])
    return cfg.outcomes


def run_outcomes(
    cfg: RunConfig, stop: threading.Event | None = None, checkpoint_every_s: float = 15.0, max_batches: int | None = None
) -> OutcomeStats:
    """Read the run's outcome source into its outcome store until the source ends (a recording
    or a window) or `stop` is set; exports what it stored every `checkpoint_every_s` and at the
    end."""
    spec = outcome_spec(cfg)
    codec = OutcomeCodec(spec, payload_reader(spec))
    writer = OutcomeWriter(cfg)
    stats = OutcomeStats()
    try:
        writer.write_meta(
            {
                "store_schema_version": OUTCOME_STORE_SCHEMA_VERSION,
                "run_id": cfg.run.id,
                "worker": cfg.run.worker,
                OUTCOMES_COMPLETE: False,
            }
        )
        exporter = Exporter(writer, OUTCOME_EXPORT_TABLES, OUTCOME_EXPORTS)
        source = open_source(spec.source, writer.checkpoints(), member=f"{cfg.run.id}.outcomes.{cfg.run.worker}")
        try:
            last_export = time.monotonic()
            while not (stop is not None and stop.is_set()):
                if max_batches is not None and stats.batches >= max_batches:
                    break
                batches = source.poll(cfg.run.batch_size, cfg.run.batch_timeout_ms)
                if batches:
                    _store(writer, codec, batches, stats)
                    source.commit(writer.checkpoints())
                elif source.finished:
                    stats.complete = True
                    break
                if time.monotonic() - last_export >= checkpoint_every_s:
                    exporter.export_or_record(final=False)
                    last_export = time.monotonic()
        finally:
            source.close()
        stats.finished = time.monotonic()
        writer.write_meta({"last_stats": stats.summary(), OUTCOMES_COMPLETE: stats.complete})
        exporter.export_or_record(final=True)
        return stats
    finally:
        writer.close()


def _store(writer: OutcomeWriter, codec: OutcomeCodec, batches: list[Any], stats: OutcomeStats) -> None:
    rows: list[OutcomeRow] = []
    dead: list[DeadLetter] = []
    positions: dict[tuple[str, int], Position] = {}
    for b in batches:
        key = (b.source, b.part)
        before = writer.positions.get(key, Position(0))
        kept = 0
        for rec in b.records:
            out = codec.decode(b.source, b.part, rec.offset, rec.key, rec.value, rec.timestamp)
            if isinstance(out, DeadLetter):
                dead.append(out)
                stats.dead_letters[out.reason] += 1
            else:
                rows.append(out)
                kept += 1
        positions[key] = Position(b.records[-1].offset + 1, before.consumed + len(b.records), before.sampled + kept)
        stats.consumed += len(b.records)
    stats.stored += writer.write_batch(rows, dead, positions)
    stats.batches += 1
