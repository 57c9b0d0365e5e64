"""A worker that reads records of one kind (outcomes, served traffic) from a topic, a window or
a recording into a store of its own, `<kind>-<worker>.duckdb`, and publishes what it stored as
checkpoint exports under `<run>/<kind's folder>/<worker>/` for the judge (replay/exports.py).

Exactly-once effect, as the replay: each batch's rows, dead letters and partition checkpoints
are committed in one DuckDB transaction, and the source's offsets are committed only after it;
rows are keyed by source coordinates (INSERT OR IGNORE), so a crash between the two commits
re-reads a batch that then adds nothing. A restart resumes from the store's checkpoints."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import orjson
import pyarrow as pa

from shadowdiff.replay.exports import Exporter
from shadowdiff.replay.messages import Position, SourceRecord
from shadowdiff.replay.sources import open_source
from shadowdiff.replay.store import WRITER_CONFIG, store_dead_and_checkpoints, stored_positions, transaction, write_meta
from shadowdiff.schemas.config import FileSource, KafkaSource, RunSection
from shadowdiff.schemas.errors import StoreError
from shadowdiff.schemas.records import DeadLetter


class RecordCodec(Protocol):
    def decode_record(self, source: str, part: int, rec: SourceRecord) -> tuple[Any, ...] | DeadLetter: ...


@dataclass(frozen=True)
class RecordKind:
    """What a record worker stores and where: its store file, DDL and schema version, the table
    its rows go to (built as Arrow by `arrow` from decoded rows and the time they were received),
    the tables it exports and the folder it publishes them under."""

    what: str  # in messages: "outcome", "served-traffic"
    store: Callable[[RunSection], Path]
    ddl: str
    schema_version: int
    table: str
    arrow: Callable[[list[tuple[Any, ...]], datetime], pa.Table]
    export_tables: tuple[str, ...]
    export_folder: str
    complete_key: str  # run_meta: the worker read its whole source


def keyed_columns(cols: list[tuple[Any, ...]]) -> dict[str, pa.Array]:
    """The source coordinates every stored record is keyed by, from a batch's columns."""
    return {
        "source": pa.array(cols[0], pa.string()),
        "part": pa.array(cols[1], pa.int32()),
        "offset": pa.array(cols[2], pa.int64()),
    }


class _Owner:
    """What the Exporter reads of a writer: the run section (home, id, worker, shared)."""

    def __init__(self, run: RunSection) -> None:
        self.run = run


class RecordWriter:
    """The read-write connection of one record store file."""

    def __init__(self, run: RunSection, kind: RecordKind) -> None:
        self.cfg = _Owner(run)
        self.kind = kind
        self.path = kind.store(run)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path), config=WRITER_CONFIG)
        except duckdb.Error as err:
            raise StoreError(f"cannot open {kind.what} store {self.path}: {err}") from err
        self.con.execute(kind.ddl)
        row = self.con.execute("SELECT value FROM run_meta WHERE key = 'store_schema_version'").fetchone()
        if row is not None and int(orjson.loads(row[0])) != kind.schema_version:
            raise StoreError(f"{self.path} has {kind.what} store schema {row[0]}, this shadowdiff writes {kind.schema_version}")
        self.positions = stored_positions(self.con)

    def write_meta(self, items: dict[str, Any]) -> None:
        write_meta(self.con, items)

    def checkpoints(self) -> dict[tuple[str, int], int]:
        return {k: p.next_offset for k, p in self.positions.items()}

    def write_batch(self, rows: list[tuple[Any, ...]], dead: list[DeadLetter], positions: dict[tuple[str, int], Position]) -> int:
        """Store one batch with its checkpoints atomically; returns the rows newly stored (a
        re-read batch stores none)."""
        stored = 0
        with transaction(self.con, f"a batch of {self.kind.what} records") as cur:
            if rows:
                cur.register("batch_tbl", self.kind.arrow(rows, datetime.now(UTC)))
                inserted = cur.execute(
                    f'INSERT OR IGNORE INTO {self.kind.table} BY NAME SELECT * FROM batch_tbl RETURNING "offset"'
                )
                stored = len(inserted.fetchall())
                cur.unregister("batch_tbl")
            store_dead_and_checkpoints(cur, dead, positions)
        self.positions.update(positions)
        return stored

    def close(self) -> None:
        self.con.close()


@dataclass
class RecordStats:
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


# called after each stored batch and at the end (final=True) with the writer's connection
AfterBatch = Callable[[RecordWriter, RecordStats, bool], None]


def run_records(
    run: RunSection,
    source_spec: FileSource | KafkaSource,
    codec: RecordCodec,
    kind: RecordKind,
    stop: threading.Event | None = None,
    checkpoint_every_s: float = 15.0,
    max_batches: int | None = None,
    after_checkpoint: AfterBatch | None = None,
) -> RecordStats:
    """Read the source into the kind's store until it ends (a recording or a window) or `stop`
    is set; exports what it stored every `checkpoint_every_s` and at the end, and calls
    `after_checkpoint` after each export (a worker that judges on its own connection)."""
    writer = RecordWriter(run, kind)
    stats = RecordStats()
    try:
        writer.write_meta(
            {"store_schema_version": kind.schema_version, "run_id": run.id, "worker": run.worker, kind.complete_key: False}
        )
        exporter = Exporter(writer, kind.export_tables, kind.export_folder)
        source = open_source(source_spec, writer.checkpoints(), member=f"{run.id}.{kind.export_folder}.{run.worker}")
        try:
            last_export = time.monotonic()
            while not (stop is not None and stop.is_set()):
                if max_batches is not None and stats.batches >= max_batches:
                    break
                batches = source.poll(run.batch_size, run.batch_timeout_ms)
                if batches:
                    _store(writer, codec, batches, stats)
                    source.commit(writer.checkpoints())
                elif source.finished:
                    stats.complete = True
                    break
                if time.monotonic() - last_export >= checkpoint_every_s:
                    exporter.export_or_record(final=False)
                    if after_checkpoint is not None:
                        after_checkpoint(writer, stats, False)
                    last_export = time.monotonic()
        finally:
            source.close()
        stats.finished = time.monotonic()
        writer.write_meta({"last_stats": stats.summary(), kind.complete_key: stats.complete})
        exporter.export_or_record(final=True)
        if after_checkpoint is not None:
            after_checkpoint(writer, stats, True)
        return stats
    finally:
        writer.close()


def _store(writer: RecordWriter, codec: RecordCodec, batches: list[Any], stats: RecordStats) -> None:
    rows: list[tuple[Any, ...]] = []
    dead: list[DeadLetter] = []
    positions: dict[tuple[str, int], Position] = {}
    for b in batches:
        key = (b.source, b.part)
        before = writer.positions.get(key, Position(0))
        kept = 0
        for rec in b.records:
            out = codec.decode_record(b.source, b.part, rec)
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
