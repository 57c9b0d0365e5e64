"""A one-off judge's scratch database: a DuckDB file for its largest intermediate, the pairs.

A temporary table past the judge's memory limit spills to DuckDB's temporary files as it is in
memory, uncompressed, and every later part of the judge reads it back from there. A table in a
database file is stored compressed, as the stores are: the pairs of a large run take a fraction
of the bytes, and each later part reads that much less.

The file is unlinked as soon as it is attached. The connection keeps it open, and it goes with
the connection, however that ends. DuckDB's write-ahead log beside it lives only between a
write and the next checkpoint; one a killed judge left behind is removed by the next judge that
attaches a scratch in the same folder.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import duckdb

from shadowdiff.schemas.sql import literal

SCRATCH = "scratch"
_PREFIX = "judge-scratch-"

log = logging.getLogger(__name__)


def attach_scratch(con: duckdb.DuckDBPyConnection, folder: Path) -> None:
    """Attach a scratch database in `folder` as `scratch`. Where it cannot be made (a read-only
    folder), the judge keeps its pairs in a temporary table."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_orphaned_logs(folder)
        path = folder / f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}.duckdb"
        con.execute(f"ATTACH {literal(str(path))} AS {SCRATCH}")
        path.unlink()
    except (OSError, duckdb.Error) as err:  # a folder it cannot write: the temporary table still works
        log.info("no scratch database in %s (%s): the pairs stay in a temporary table", folder, err)


def has_scratch(con: duckdb.DuckDBPyConnection) -> bool:
    (n,) = con.execute("SELECT count(*) FROM duckdb_databases() WHERE database_name = ?", [SCRATCH]).fetchone() or (0,)
    return bool(n)


def _remove_orphaned_logs(folder: Path) -> None:
    """The write-ahead logs of scratch databases whose process is gone."""
    for wal in folder.glob(f"{_PREFIX}*.duckdb.wal"):
        pid = wal.name.removeprefix(_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            wal.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


__all__ = ["SCRATCH", "attach_scratch", "has_scratch"]
