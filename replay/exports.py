"""Immutable checkpoint exports: a writer's DuckDB file can be opened by no other process while
it writes, so at every checkpoint the writer also publishes the rows it committed since its last
export as Parquet files in a new folder of its own, which any number of readers (one judge per
run, on this machine or another) can take while it writes.

    <run>/exports/<worker>/<seq:08d>/<table>.parquet for each of schemas.layout.EXPORT_TABLES,
                                     manifest.json   (written last: a folder without it is not one)
    <run>/exports/<worker>/heartbeat.json           the last export's time, or final

Rows are exported by DuckDB rowid ranges (the store is append-only), from committed data only.
A crash after a folder is published but before the store records it re-exports the same rows
under the next number: readers keep one row per source coordinates, so a copy changes nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import orjson

from shadowdiff.replay.objectstore import RUN_FILES, SharedRun
from shadowdiff.replay.store import WRITER_MEMORY
from shadowdiff.schemas.config import RunSection
from shadowdiff.schemas.layout import EXPORT_TABLES, RunLayout
from shadowdiff.schemas.sql import literal

_STATE = "export_state"
EXPORT_MEMORY = "128MB"  # a COPY of one checkpoint's rows to Parquet, while it runs
log = logging.getLogger(__name__)


class _HasRun(Protocol):
    @property
    def run(self) -> RunSection: ...


class ExportedStore(Protocol):
    """A writer whose tables are exported: its connection holds them, a `checkpoints` table and
    a `run_meta` table, where the export state is kept; its config names the run and worker."""

    @property
    def cfg(self) -> _HasRun: ...

    con: duckdb.DuckDBPyConnection

    def write_meta(self, items: dict[str, Any]) -> None: ...


class Exporter:
    """Publishes a writer's `tables` under `<run>/<folder>/<worker>/`: the replay's stores under
    `exports` (the default), the outcome stores under `outcome-exports`."""

    def __init__(self, writer: ExportedStore, tables: tuple[str, ...] = EXPORT_TABLES, folder: str = "exports") -> None:
        self.writer = writer
        self.tables = tables
        self.folder = folder
        layout = RunLayout(writer.cfg.run.home, writer.cfg.run.id)
        self.root = layout.dir / folder / writer.cfg.run.worker
        row = writer.con.execute("SELECT value FROM run_meta WHERE key = ?", [_STATE]).fetchone()
        state: dict[str, Any] = orjson.loads(row[0]) if row else {}
        self.seq = int(state.get("seq", 0))
        self.exported = {t: int(state.get("rowids", {}).get(t, -1)) for t in tables}
        # a folder published before a crash, not yet recorded in the store: numbered past it
        published = [int(p.name) for p in self.root.glob("[0-9]*") if p.name.isdigit()] if self.root.exists() else []
        self.seq = max([self.seq, *published])
        self.pushed = int(state.get("pushed", 0))
        # exports that failed (all of this process's, and those since the last one published):
        # readers see them in the heartbeat, the verdict's coverage and the gate's /metrics
        self.failed = 0
        self.failing = 0
        self.last_failure: str | None = None
        self.shared = SharedRun(writer.cfg.run.shared, writer.cfg.run.id) if writer.cfg.run.shared else None
        # known to readers from its start: a judge must not take the run as finished while a
        # worker that has not exported yet is running
        self._heartbeat(False)
        if self.shared is not None:
            try:
                self.shared.push_file(self.root / "heartbeat.json", f"{folder}/{writer.cfg.run.worker}/heartbeat.json")
            except OSError as err:  # pushed again at the first checkpoint
                log.warning("run %s: %s", writer.cfg.run.id, err)

    def export(self, final: bool = False) -> Path | None:
        """Publish the rows committed since the last export; None when there were none and the
        run goes on (the heartbeat still says the worker is alive)."""
        con = self.writer.con
        tops = {t: int(con.execute(f"SELECT coalesce(max(rowid), -1) FROM {t}").fetchone()[0]) for t in self.tables}  # type: ignore[index]
        changed = any(tops[t] > self.exported[t] for t in self.tables)
        folder = None
        # the final export is published even without new rows: its manifest carries the run's
        # last statistics and checkpoints
        if changed or final:
            folder = self._publish(tops)
            self.failing = 0
        self._heartbeat(final)
        if self.shared is not None:
            self._push()
        return folder

    def _push(self) -> None:
        """Copy the folders published since the last push to the object store, then the
        heartbeat (an unreachable store is retried at the next checkpoint: the folders wait
        here)."""
        assert self.shared is not None
        layout = RunLayout(self.writer.cfg.run.home, self.writer.cfg.run.id)
        if self.pushed == 0:
            for name in RUN_FILES:
                if (layout.dir / name).exists():
                    self.shared.push_file(layout.dir / name, name)
        worker = self.writer.cfg.run.worker
        for seq in range(self.pushed + 1, self.seq + 1):
            folder = self.root / f"{seq:08d}"
            if folder.is_dir():
                self.shared.push_folder(folder, f"{self.folder}/{worker}/{folder.name}")
            self.pushed = seq
            self.writer.write_meta({_STATE: {"seq": self.seq, "rowids": self.exported, "pushed": self.pushed}})
        self.shared.push_file(self.root / "heartbeat.json", f"{self.folder}/{worker}/heartbeat.json")

    def _publish(self, tops: dict[str, int]) -> Path:
        con = self.writer.con
        seq = self.seq + 1
        final_dir = self.root / f"{seq:08d}"
        tmp = self.root / f".tmp-{seq:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        rows: dict[str, int] = {}
        # the writer's buffer budget is small (its inserts are); a Parquet COPY of a checkpoint's
        # rows needs more, and ran out of it on a loaded machine: the budget is raised for the
        # copy, which need not keep the rows' order (readers key them) and so buffers less
        con.execute(f"SET memory_limit = '{EXPORT_MEMORY}'")
        con.execute("SET preserve_insertion_order = false")
        try:
            for t in self.tables:
                where = f"rowid > {self.exported[t]} AND rowid <= {tops[t]}"
                target = literal(str(tmp / f"{t}.parquet"))
                copied = con.execute(f"COPY (SELECT * FROM {t} WHERE {where}) TO {target} (FORMAT parquet, COMPRESSION zstd)")
                rows[t] = int(copied.fetchone()[0])  # type: ignore[index]
        finally:
            con.execute("RESET preserve_insertion_order")
            con.execute(f"SET memory_limit = '{WRITER_MEMORY}'")
        manifest = {
            "worker": self.writer.cfg.run.worker,
            "seq": seq,
            "created_at": datetime.now(UTC).isoformat(),
            "rowids": tops,
            "rows": rows,
            "checkpoints": [
                {"source": s, "part": p, "next_offset": o, "consumed": c, "sampled": n}
                for s, p, o, c, n in con.execute(
                    "SELECT source, part, next_offset, consumed, sampled FROM checkpoints ORDER BY 1, 2"
                ).fetchall()
            ],
            "run_meta": {k: orjson.loads(v) for k, v in con.execute("SELECT key, value FROM run_meta").fetchall() if k != _STATE},
        }
        (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, default=str))
        os.replace(tmp, final_dir)  # readers see the whole folder or none of it
        self.writer.write_meta({_STATE: {"seq": seq, "rowids": tops, "pushed": self.pushed}})
        self.seq = seq
        self.exported = dict(tops)
        return final_dir

    def export_or_record(self, final: bool = False) -> None:
        """`export`, and a failure recorded instead of raised: the rows are safe in the store
        and the next checkpoint exports them."""
        try:
            self.export(final)
        except (OSError, duckdb.Error) as err:
            log.warning("exporting run %s checkpoint failed, retried at the next one: %s", self.writer.cfg.run.id, err)
            self.record_failure(err)

    def record_failure(self, err: Exception) -> None:
        """An export that failed: its rows wait in the store for the next one, and readers are
        told (the heartbeat), unless the disk refuses that too."""
        self.failed += 1
        self.failing += 1
        self.last_failure = f"{type(err).__name__}: {err}"[:300]
        try:
            self._heartbeat(False)
        except OSError as again:
            log.warning("run %s: the heartbeat could not record the failed export: %s", self.writer.cfg.run.id, again)

    def _heartbeat(self, final: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        beat = {
            "worker": self.writer.cfg.run.worker,
            "at": datetime.now(UTC).isoformat(),
            "seq": self.seq,
            "final": final,
            "failed_exports": self.failed,
            "failing_exports": self.failing,
            "last_failure": self.last_failure,
        }
        tmp = self.root / ".heartbeat.tmp"
        tmp.write_bytes(orjson.dumps(beat))
        os.replace(tmp, self.root / "heartbeat.json")
