"""Open a run's stores for reading (the `pairs` the checks aggregate: diff/pairs.py).

DuckDB lets one process write a file or many read it, never both: the judge reads either
through the writer's own connection (the replay's checkpoint hook) or, when no writer holds the
files, by attaching every worker's store read-only into one in-memory database. Rows that two
workers both stored during a consumer-group rebalance are deduplicated by their coordinates."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import duckdb
import orjson
from pydantic import ValidationError

from shadowdiff.diff.exports import open_exports
from shadowdiff.diff.scratch import attach_scratch
from shadowdiff.schemas.config import ModelSpec, RunConfig
from shadowdiff.schemas.errors import RunNotFound, StoreError
from shadowdiff.schemas.layout import EXPORT_KEYS, RunLayout
from shadowdiff.schemas.policy import Policy
from shadowdiff.schemas.records import SOURCE_COMPLETE
from shadowdiff.schemas.sql import literal

TABLES = ("requests", "outputs", "dead_letters", "checkpoints", "run_meta", "quota_samples")
_KEYS = {
    **EXPORT_KEYS,
    "checkpoints": "source, part",
    "run_meta": "key",
}


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
    tmp = home / run_id / ".tmp"
    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(tmp)})
    for i, f in enumerate(files):
        try:
            con.execute(f"ATTACH {literal(str(f))} AS s{i} (READ_ONLY)")
        except duckdb.Error as err:
            con.close()
            raise StoreError(f"cannot read {f} (a writer may hold it): {err}") from err
    for t in TABLES:
        if len(files) == 1:
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM s0.{t}")
        else:
            union = " UNION ALL BY NAME ".join(f"SELECT * FROM s{i}.{t}" for i in range(len(files)))
            con.execute(f"CREATE VIEW {t} AS SELECT DISTINCT ON ({_KEYS[t]}) * FROM ({union})")
    attach_scratch(con, tmp)
    return con


@dataclass(frozen=True)
class RunInfo:
    """A stored run: its id, the run config it was replayed with (`config` as stored, `run`
    as the model the replay validated) and its run_meta."""

    run_id: str
    config: dict[str, Any]
    meta: dict[str, Any]

    @cached_property
    def run(self) -> RunConfig:
        try:
            return RunConfig.model_validate(self.config)
        except ValidationError as err:  # written by the replay, which validated it: a damaged store
            raise StoreError(f"run {self.run_id}: the stored run config is not valid: {err.errors()[0]['msg']}") from err

    @property
    def candidates(self) -> list[ModelSpec]:
        return list(self.run.candidates)

    def candidate(self, name: str) -> ModelSpec:
        return next(c for c in self.run.candidates if c.name == name)

    @property
    def segment_fields(self) -> list[str]:
        seg = self.run.segments
        return [*seg.fields, seg.hour_buckets.name] if seg.hour_buckets else list(seg.fields)

    @property
    def per_segment_k(self) -> int:
        """`sampling.min_per_segment`: the quota every value of every segment field has (0: none).
        A run started by the CLI stored it resolved; "policy" left as it is means what the
        replay took, the default policy's min_samples."""
        k = self.run.sampling.min_per_segment
        return Policy().min_samples if k == "policy" else k

    def quota_k(self, quota: str) -> int | None:
        """The bottom-k size of quota 'field=value', None when the segment has no quota."""
        named = self.run.sampling.quotas
        if quota in named:
            return named[quota]
        field, _, value = quota.partition("=")
        if value in ("(other)", "(missing)"):  # the judge's pool of rare values, and no value: no quota of their own
            return None
        return self.per_segment_k if self.per_segment_k and field in self.segment_fields else None

    def has_quotas(self) -> bool:
        return bool(self.run.sampling.quotas) or self.per_segment_k > 0

    @property
    def combinations(self) -> list[list[str]]:
        return [list(c) for c in self.run.segments.combinations]

    @property
    def numeric(self) -> list[str]:
        return list(self.run.features.numeric)

    @property
    def categorical(self) -> list[str]:
        return list(self.run.features.categorical)


def source_complete(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether no more pairs will come: every worker read its source to the end (a file, a Kafka
    window) or was stopped. Read from the exports' final flags when the run is read through
    them, else from each store's run_meta."""
    has_coverage = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'coverage'").fetchone()
    if has_coverage and has_coverage[0]:
        flags = [bool(f) for (f,) in con.execute("SELECT final FROM coverage").fetchall()]
    else:
        rows = con.execute("SELECT value FROM run_meta WHERE starts_with(key, ?)", [SOURCE_COMPLETE]).fetchall()
        flags = [orjson.loads(v) is True for (v,) in rows]
    return bool(flags) and all(flags)


def run_info(con: duckdb.DuckDBPyConnection) -> RunInfo:
    meta = {k: orjson.loads(v) for k, v in con.execute("SELECT key, value FROM run_meta").fetchall()}
    if "config" not in meta:
        raise StoreError("store has no run config in run_meta (not written by shadowdiff?)")
    cfg = orjson.loads(meta["config"]) if isinstance(meta["config"], str) else meta["config"]
    return RunInfo(str(meta.get("run_id", cfg["run"]["id"])), cfg, meta)
