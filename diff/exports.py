"""Read a run from its writers' checkpoint exports (replay/exports.py): Parquet folders that any
reader may take while the writers hold their DuckDB files, on this machine or from an object
store. One row per source coordinates: a row exported twice (a crash between publishing a
folder and recording it, or two workers that both stored a message during a rebalance) is kept
once, the copy in the first folder by worker and number, so every look picks the same one."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from shadowdiff.diff.scratch import attach_scratch
from shadowdiff.diff.stretches import stretches
from shadowdiff.schemas.errors import JudgeCacheBusy, StoreError
from shadowdiff.schemas.layout import EXPORT_KEYS, EXPORT_TABLES, RunLayout
from shadowdiff.schemas.sql import literal
from shadowdiff.schemas.verdict import Coverage, WorkerCoverage

log = logging.getLogger(__name__)


def read_manifests(layout: RunLayout) -> list[dict[str, Any]]:
    return [orjson.loads((f / "manifest.json").read_bytes()) | {"folder": str(f)} for f in layout.export_folders()]


def open_exports(home: Path, run_id: str, memory_limit: str = "2GB") -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the run's tables built from every published export, and a
    `coverage` table: per worker, the last export it published and its heartbeat. Reads every
    export: the full re-judge (the watch keeps a cache it updates from new exports only)."""
    layout = RunLayout(home, run_id)
    manifests = read_manifests(layout)
    if not manifests:
        raise StoreError(f"run {run_id!r} has no exports under {layout.exports}")
    tmp = layout.dir / ".tmp"
    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(tmp)})
    for t in EXPORT_TABLES:
        files = "[" + ", ".join(literal(str(Path(m["folder"]) / f"{t}.parquet")) for m in manifests) + "]"
        keys = EXPORT_KEYS[t]
        read = f"read_parquet({files}, union_by_name = true, filename = true)"
        # materialised once: the judge reads these many times, a view would sort at every read.
        # Read as they are, and again keeping the first folder's copy of a row only when some
        # row was stored twice (rare): that DISTINCT ON sorts every wide row, and at 50M pairs
        # spilled more than the disk held
        con.execute(f"CREATE TABLE {t} AS SELECT * EXCLUDE (filename) FROM {read}")
        if _repeats(con, t, keys):
            con.execute(
                f"""CREATE OR REPLACE TABLE {t} AS SELECT * EXCLUDE (filename) FROM (
                      SELECT DISTINCT ON ({keys}) * FROM {read} ORDER BY {keys}, filename)"""
            )
    _run_tables(con, layout, manifests, "")
    attach_scratch(con, tmp)
    return con


def _run_tables(con: duckdb.DuckDBPyConnection, layout: RunLayout, manifests: list[dict[str, Any]], kind: str) -> None:
    """`checkpoints`, `run_meta` and `coverage` from the exports' manifests (`kind` "TEMP" on a
    cache's connection: they are rebuilt at every look)."""
    latest: dict[str, dict[str, Any]] = {}
    for m in manifests:
        if m["worker"] not in latest or m["seq"] > latest[m["worker"]]["seq"]:
            latest[m["worker"]] = m
    con.execute(
        f"""CREATE OR REPLACE {kind} TABLE checkpoints
            (source VARCHAR, part INTEGER, next_offset BIGINT, consumed BIGINT, sampled BIGINT)"""
    )
    rows = [
        (c["source"], c["part"], c["next_offset"], c["consumed"], c["sampled"]) for m in latest.values() for c in m["checkpoints"]
    ]
    if rows:
        con.executemany("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)", rows)
    # a partition that moved between workers: read up to the furthest, counted by each reader
    con.execute(
        f"""CREATE OR REPLACE {kind} TABLE checkpoints AS SELECT source, part, max(next_offset) AS next_offset,
           sum(consumed)::BIGINT AS consumed, sum(sampled)::BIGINT AS sampled FROM checkpoints GROUP BY ALL"""
    )
    newest = max(manifests, key=lambda m: (m["created_at"], m["worker"]))
    con.execute(f"CREATE OR REPLACE {kind} TABLE run_meta (key VARCHAR, value JSON)")
    con.executemany(
        "INSERT INTO run_meta VALUES (?, ?)", [(k, orjson.dumps(v).decode()) for k, v in sorted(newest["run_meta"].items())]
    )
    con.execute(
        f"""CREATE OR REPLACE {kind} TABLE coverage (worker VARCHAR, seq INTEGER, exported_at VARCHAR,
            heartbeat_at VARCHAR, final BOOLEAN, failed INTEGER, failing INTEGER, last_failure VARCHAR)"""
    )
    beats = {b["worker"]: b for b in (orjson.loads(p.read_bytes()) for p in layout.heartbeats())}
    # a worker that started (its first heartbeat) but never published an export is covered too:
    # with nothing of it in the verdict, it is the first worker the verdict must name
    none: dict[str, Any] = {"seq": 0, "created_at": None}
    con.executemany(
        "INSERT INTO coverage VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                w,
                m["seq"],
                m["created_at"],
                beat.get("at"),
                bool(beat.get("final", False)),
                int(beat.get("failed_exports", 0)),
                int(beat.get("failing_exports", 0)),
                beat.get("last_failure"),
            )
            for w, m in sorted((w, latest.get(w, none)) for w in set(latest) | set(beats))
            for beat in [beats.get(w, {})]
        ],
    )


def open_cache(home: Path, run_id: str, memory_limit: str = "2GB") -> duckdb.DuckDBPyConnection:
    """A connection over the judge's cache of the run's exports (`<run>/judge-cache.duckdb`),
    brought up to date by reading only the exports it has not read yet: a look's reading cost
    grows with the new rows, not the run. Its tables hold exactly what `open_exports` builds
    (one row per source coordinates, the copy of the first folder by worker and number, whatever
    order the folders arrived in), so a verdict judged on it equals a full re-judge. One
    process at a time (the run's watch); a cache that cannot be read is rebuilt."""
    layout = RunLayout(home, run_id)
    if not layout.export_folders():
        raise StoreError(f"run {run_id!r} has no exports under {layout.exports}")
    try:
        con = _connect(layout, memory_limit)
    except duckdb.Error as err:
        if _locked_by_another_process(layout.judge_cache):
            raise JudgeCacheBusy(f"run {run_id!r}: another judge holds {layout.judge_cache} (one watch per run)") from err
        # a damaged cache: it only ever holds copies of the exports, so it is rebuilt
        log.warning("run %s: judge cache unusable (%s); rebuilding it from the exports", run_id, err)
        for p in (layout.judge_cache, layout.judge_cache.with_name(layout.judge_cache.name + ".wal")):
            p.unlink(missing_ok=True)
        con = _connect(layout, memory_limit)
    try:
        # an export that cannot be read fails this look and leaves the cache as it was
        have = {f for (f,) in con.execute("SELECT folder FROM ingested").fetchall()}
        new = [f for f in layout.export_folders() if _origin(layout, f) not in have]
        if new:
            _ingest(con, layout, new)
        manifests = [orjson.loads(m) for (m,) in con.execute("SELECT manifest FROM ingested ORDER BY folder").fetchall()]
        for t in EXPORT_TABLES:
            con.execute(f"CREATE OR REPLACE TEMP VIEW {t} AS SELECT * EXCLUDE (origin, gen) FROM {_cached(t)}")
        _run_tables(con, layout, manifests, "TEMP")
        return con
    except BaseException:
        con.close()
        raise


def _locked_by_another_process(path: Path) -> bool:
    """Whether another process holds the POSIX lock DuckDB takes on a database file it has open
    (probed with a lock of our own, released at once: DuckDB's error says so only in its text)."""
    import errno
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in (errno.EACCES, errno.EAGAIN)
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _connect(layout: RunLayout, memory_limit: str) -> duckdb.DuckDBPyConnection:
    tmp = layout.dir / ".tmp"
    con = duckdb.connect(str(layout.judge_cache), config={"memory_limit": memory_limit, "temp_directory": str(tmp)})
    try:
        con.execute("CREATE TABLE IF NOT EXISTS ingested (folder VARCHAR PRIMARY KEY, manifest JSON)")
        # how many cached rows of a table a look replaced with an earlier folder's copy
        con.execute("CREATE TABLE IF NOT EXISTS replaced_rows (gen INTEGER, table_name VARCHAR, n BIGINT)")
        # the look that read a folder (1, 2, ...): the judge's kept pairs update from the rows
        # of later looks only (diff/pairs.py); a cache from before has every row in look 0
        con.execute("ALTER TABLE ingested ADD COLUMN IF NOT EXISTS gen INTEGER DEFAULT 0")
        for t in EXPORT_TABLES:
            if table_exists(con, _cached(t)):
                con.execute(f"ALTER TABLE {_cached(t)} ADD COLUMN IF NOT EXISTS gen INTEGER DEFAULT 0")
        return con
    except BaseException:
        con.close()
        raise


def _origin(layout: RunLayout, folder: Path) -> str:
    """A folder's name within the run's exports, `<worker>/<seq>`: the order in which copies of
    one row are preferred (the same order as open_exports' file names)."""
    return folder.relative_to(layout.exports).as_posix()


def _cached(table: str) -> str:
    return f"cached_{table}"


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    (n,) = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND NOT temporary", [table]).fetchone() or (0,)
    return bool(n)


def cache_generation(con: duckdb.DuckDBPyConnection) -> int | None:
    """The number of the latest look that added rows to the judge's cache `con` is open on
    (rows carry theirs in `gen`); None when `con` is not on a judge's cache."""
    if not table_exists(con, "ingested"):
        return None
    (gen,) = con.execute("SELECT coalesce(max(gen), 0) FROM ingested").fetchone() or (0,)
    return int(gen)


def changed_since(table: str, gen: int, with_gen: bool = False) -> str:
    """SQL for the cached rows of `table` ("requests", "outputs") that looks after `gen` added
    (`with_gen`: with the look that added each, in `gen`)."""
    return f"SELECT * EXCLUDE (origin{'' if with_gen else ', gen'}) FROM {_cached(table)} WHERE gen > {int(gen)}"


def replaced_since(con: duckdb.DuckDBPyConnection, table: str, gen: int) -> int:
    """How many cached rows of `table` looks after `gen` replaced with an earlier folder's copy
    (rows taken back, which `changed_since` does not show)."""
    (n,) = con.execute(
        "SELECT coalesce(sum(n), 0) FROM replaced_rows WHERE table_name = ? AND gen > ?", [table, int(gen)]
    ).fetchone() or (0,)
    return int(n)


# Rows of a table read from the exports in one step of a look (several folders a step): the
# first look of a long run reads every folder, and one DISTINCT ON over all of them (200M rows
# at 50M pairs) sorted more than the disk held.
INGEST_ROWS_PER_STEP = 4_000_000


def _ingest(con: duckdb.DuckDBPyConnection, layout: RunLayout, folders: list[Path]) -> None:
    """Add the rows of `folders` to the cache in one transaction, a stretch of folders at a
    time in folder order. A row whose coordinates the cache already holds keeps the copy of the
    earlier folder: rare (a crash between publishing and recording an export, or a message two
    workers stored during a rebalance), and the only case that touches old rows. In folder
    order, a stretch's rows never come before those of the stretches before it, so the rows
    kept are those of one step over every folder."""
    folders = sorted(folders, key=lambda f: _origin(layout, f))
    manifests = {f: (f / "manifest.json").read_text(encoding="utf-8") for f in folders}
    con.execute("BEGIN")
    try:
        (gen,) = con.execute("SELECT coalesce(max(gen), 0) + 1 FROM ingested").fetchone() or (1,)
        for t in EXPORT_TABLES:
            files = [str(f / f"{t}.parquet") for f in folders]
            # the files' row counts, from their footers
            counts = dict(con.execute("SELECT file_name, num_rows FROM parquet_file_metadata(?)", [files]).fetchall())
            sizes = [int(counts.get(file, 0)) for file in files]
            for stretch in stretches(folders, sizes, INGEST_ROWS_PER_STEP):
                _ingest_table(con, layout, t, stretch, int(gen))
        con.executemany(
            "INSERT INTO ingested (folder, manifest, gen) VALUES (?, ?, ?)",
            [(_origin(layout, f), manifests[f], gen) for f in folders],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _repeats(con: duckdb.DuckDBPyConnection, table: str, keys: str) -> bool:
    """Whether some key of `table` is held by more than one of its rows."""
    (n,) = con.execute(f"SELECT count(*) FROM (SELECT 1 FROM {table} GROUP BY {keys} HAVING count(*) > 1)").fetchone() or (0,)
    return bool(n)


def _ingest_table(con: duckdb.DuckDBPyConnection, layout: RunLayout, t: str, folders: list[Path], gen: int) -> None:
    prefix = len(str(layout.exports)) + 1
    keys = EXPORT_KEYS[t]
    files = "[" + ", ".join(literal(str(f / f"{t}.parquet")) for f in folders) + "]"
    # the folder a row came from, as `<worker>/<seq>`, from the file's path
    origin = f"regexp_replace(substr(filename, {prefix + 1}), '/[^/]*$', '')"
    read = f"read_parquet({files}, union_by_name = true, filename = true)"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE incoming AS SELECT * EXCLUDE (filename), {origin} AS origin, {gen} AS gen FROM {read}"
    )
    # a row stored twice (by two folders) is rare: the stretch is read as it is, and read again
    # keeping the first folder's copy only when its keys repeat. That DISTINCT ON sorts every
    # row, wide texts and all: nine tenths of a first look's reading when it always ran
    if _repeats(con, "incoming", keys):
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE incoming AS SELECT * FROM (
                  SELECT DISTINCT ON ({keys}) * EXCLUDE (filename), {origin} AS origin, {gen} AS gen
                  FROM {read} ORDER BY {keys}, filename)"""
        )
    cached = _cached(t)
    con.execute(f"CREATE TABLE IF NOT EXISTS {cached} AS SELECT * FROM incoming LIMIT 0")
    cols = [k.strip() for k in keys.split(",")]

    def same(a: str, b: str, cols: list[str] = cols) -> str:
        return " AND ".join(f"{a}.{k} = {b}.{k}" for k in cols)

    # the one join with the cached rows: the incoming keys (few) probe the cached ones, and
    # only cached rows in the incoming offsets' range can clash. The range is a constant so
    # that DuckDB skips the other row groups by their min/max: a look's stretches then read
    # the cache about once between them, not once each
    lo, hi = con.execute('SELECT min("offset"), max("offset") FROM incoming').fetchone() or (None, None)
    if lo is None:
        return
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE clashes AS SELECT {", ".join(f"i.{k}" for k in cols)},
            i.origin < c.origin AS incoming_first FROM incoming i JOIN {cached} c ON {same("c", "i")}
            WHERE c."offset" BETWEEN {int(lo)} AND {int(hi)}"""
    )
    (n_clash,) = con.execute("SELECT count(*) FROM clashes").fetchone() or (0,)
    if n_clash:
        # aggregates kept from the rows alone (diff/features.py) cannot take a row back:
        # they are built whole after a look that replaced cached rows
        con.execute(
            "INSERT INTO replaced_rows SELECT ?, ?, count(*) FROM clashes WHERE incoming_first HAVING count(*) > 0",
            [gen, t],
        )
        # the copy of the earlier folder stays, on whichever side it is
        for side, alias, first in ((cached, "c", ""), ("incoming", "i", "NOT ")):
            con.execute(
                f"""DELETE FROM {side} {alias} WHERE EXISTS
                    (SELECT 1 FROM clashes x WHERE {first}x.incoming_first AND {same("x", alias)})"""
            )
    # on one thread: a parallel insert leaves a partly filled row group behind each thread's
    # share, and DuckDB merges those at later checkpoints, a few at a time: seconds at every
    # look's commit after a first look of 100 folders, at 50M pairs
    (threads,) = con.execute("SELECT current_setting('threads')").fetchone() or (1,)
    con.execute("SET threads = 1")
    try:
        con.execute(f"INSERT INTO {cached} BY NAME SELECT * FROM incoming")
    finally:
        con.execute(f"SET threads = {int(threads)}")


def coverage(con: duckdb.DuckDBPyConnection, silent_after_s: float) -> Coverage | None:
    """Which workers' exports a verdict covers, and which of them stopped reporting (no
    heartbeat for `silent_after_s` and no final export); None for a run read from its stores."""
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'coverage'").fetchone()[0]:  # type: ignore[index]
        return None
    now = datetime.now(UTC)
    workers = []
    rows = con.execute("SELECT * FROM coverage ORDER BY worker").fetchall()
    for worker, seq, exported_at, heartbeat_at, final, failed, failing, last_failure in rows:
        last = datetime.fromisoformat(heartbeat_at or exported_at)
        silent_s = (now - last).total_seconds()
        workers.append(
            WorkerCoverage(
                worker=worker,
                exports=seq,
                last_export_at=exported_at,
                heartbeat_at=heartbeat_at,
                final=final,
                silent=not final and silent_s > silent_after_s,
                silent_for_s=round(silent_s, 1),
                failed_exports=failed,
                failing_exports=failing,
                last_export_failure=last_failure,
            )
        )
    return Coverage(source="exports", workers=workers, silent_workers=[w.worker for w in workers if w.silent])
