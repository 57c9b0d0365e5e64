"""Aggregates kept in the judge's cache beside the kept pairs (built by diff/pairs.py), so that
a look's cost grows with the pairs it changed, not with the run.

An aggregate is a table of partial results keyed by segment (and whatever else it groups by),
and a class implementing one of two interfaces: `KeptAggregate` (built from the stored rows,
brought up from the look it stood at) or `PairAggregate` (built from a relation of signed pairs,
brought up by the kept pairs' delta), most of them through `StoredCounts` (counts of the stored
rows) or `SignedSums` (signed sums of the pairs). Each look either finds the table current, or
brings it up, or builds it whole. The same classes build it whole from a relation outside any
cache, so a full re-judge and a look read the same partials."""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from shadowdiff.diff.exports import changed_since, replaced_since, table_exists
from shadowdiff.diff.segments import SegmentSets

# rate samples only: quota samples move in and out of `pairs` as the bottom-k changes
# (diff/pairs.keep_bottom_k), which no delta of the kept pairs records
RATE = "sampled_reason = 'rate'"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeptPairs:
    """A candidate's pairs kept in the judge's cache, as of look `gen`. When the last update
    brought them from look `from_gen` (not built whole), table `delta` holds what it changed:
    the pairs it removed (`sign` -1) and those it added (+1), so aggregates kept beside the
    pairs (below) can follow them without reading every pair."""

    table: str
    delta: str
    gen: int
    from_gen: int | None
    shape: str  # the segment expressions the pairs carry: aggregates of another shape are stale


class KeptAggregate(ABC):
    """An aggregate the cache keeps as of a look: `spec` says what it was built with (another
    spec means building it whole)."""

    name: str
    spec: str

    @abstractmethod
    def build(self, table: str) -> None:
        """Fill `table` whole."""

    @abstractmethod
    def update(self, table: str, since: int) -> str | None:
        """Bring `table` up from look `since`, or build it whole and say why."""


class PairAggregate(ABC):
    """An aggregate of the kept pairs' rate samples, whose rows carry a `sign` (+1 added, -1
    taken back)."""

    name: str
    spec: str

    @abstractmethod
    def build(self, table: str, source: str) -> None:
        """Fill `table` from the signed pairs of relation `source`."""

    @abstractmethod
    def apply(self, table: str, delta: str) -> str | None:
        """Apply the signed pairs of relation `delta`, or build `table` whole and say why."""


def kept_table(con: duckdb.DuckDBPyConnection, key: str, aggregate: KeptAggregate, gen: int) -> str:
    """The table of `aggregate` (cached under `key`) as of look `gen`, in one transaction:
    current; or brought up from the look it stood at; or, with another spec or none kept,
    built whole."""
    table = "kept_agg_" + hashlib.sha256(key.encode()).hexdigest()[:16]
    con.execute("CREATE TABLE IF NOT EXISTS kept_aggregates (name VARCHAR PRIMARY KEY, spec VARCHAR, gen INTEGER)")
    row = con.execute("SELECT spec, gen FROM kept_aggregates WHERE name = ?", [table]).fetchone()
    current = row is not None and row[0] == aggregate.spec and table_exists(con, table)
    if current and row is not None and int(row[1]) == gen:
        return table
    con.execute("BEGIN")
    try:
        if current and row is not None and int(row[1]) < gen:
            rebuilt = aggregate.update(table, int(row[1]))
            if rebuilt:
                log.debug("%s: built whole at look %s (%s)", aggregate.name, gen, rebuilt)
            else:
                log.debug("%s: updated from look %s to %s", aggregate.name, row[1], gen)
        else:
            aggregate.build(table)
            why = "none kept" if not current and (row is None or row[0] == aggregate.spec) else "its spec changed"
            log.debug("%s: built whole at look %s (%s)", aggregate.name, gen, why)
        con.execute("INSERT OR REPLACE INTO kept_aggregates VALUES (?, ?, ?)", [table, aggregate.spec, gen])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return table


class StoredCounts(KeptAggregate):
    """Counts of the stored rows of table `stored` ("requests" or "outputs") by `keys`, kept as of
    a look. A look adds the counts of the rows it stored. A look that replaced stored rows with an
    earlier folder's copy builds them whole: the replaced copy's values are gone, so its counts
    cannot be taken back."""

    stored: str
    keys: tuple[str, ...]
    counted: tuple[str, ...]  # the count columns, summed when a look's counts are added

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    @abstractmethod
    def counts(self, rows: str) -> str:
        """SQL: the counts by `keys` over relation `rows` (rows of the stored table)."""

    def build(self, table: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TABLE {table} AS {self.counts(self.stored)}")

    def update(self, table: str, since: int) -> str | None:
        if n := replaced_since(self.con, self.stored, since):
            self.build(table)
            return f"{n} stored {'answers' if self.stored == 'outputs' else 'requests'} replaced by an earlier folder's copy"
        keys = ", ".join(self.keys)
        summed = ", ".join(f"sum({c})::BIGINT AS {c}" for c in self.counted)
        added = self.counts(f"({changed_since(self.stored, since)})")
        self.con.execute(
            f"""CREATE OR REPLACE TABLE {table} AS SELECT {keys}, {summed} FROM (
                SELECT * FROM {table} UNION ALL BY NAME SELECT * FROM ({added})) GROUP BY {keys}"""
        )
        return None


class _OverKeptPairs(KeptAggregate):
    """A pair aggregate kept as of the kept pairs' look."""

    def __init__(self, kept: KeptPairs, aggregate: PairAggregate) -> None:
        self.kept = kept
        self.aggregate = aggregate
        self.name = aggregate.name
        self.spec = f"{kept.shape}|{aggregate.spec}"

    def build(self, table: str) -> None:
        self.aggregate.build(table, rate_pairs(self.kept.table))

    def update(self, table: str, since: int) -> str | None:
        if since != self.kept.from_gen:  # the delta starts at another look: it cannot bring this one up
            self.build(table)
            return f"the pairs' delta starts at look {self.kept.from_gen}, the aggregate stood at {since}"
        return self.aggregate.apply(table, f"(SELECT * FROM {self.kept.delta} WHERE {RATE})")


def signed_count(cond: str = "TRUE") -> str:
    """SQL: the signed count of the rows (with a `sign`) meeting `cond`."""
    return f"coalesce(sum(sign) FILTER (WHERE {cond}), 0)::BIGINT"


def signed_total(x: str, cond: str = "TRUE") -> str:
    """SQL: the signed total of `x` over the rows meeting `cond` (fsum: compensated, so that
    totals built in different orders agree to the last digits)."""
    return f"coalesce(fsum(sign * ({x})) FILTER (WHERE {cond}), 0)::DOUBLE"


def is_total(sql: str) -> bool:
    """Whether aggregate SQL is a compensated total (`signed_total`, fsum): merged by fsum and
    read as a float, where a count is merged by sum and read as an int."""
    return sql.startswith("coalesce(fsum")


def rate_pairs(relation: str) -> str:
    """The rate samples of `relation` as signed pairs (each added once)."""
    return f"(SELECT 1::TINYINT AS sign, * FROM {relation} WHERE {RATE})"


def maintained(con: duckdb.DuckDBPyConnection, kept: KeptPairs, aggregate: PairAggregate) -> str:
    """The table of `aggregate` as of the kept pairs' look."""
    return kept_table(con, f"{kept.table}:{aggregate.name}", _OverKeptPairs(kept, aggregate), kept.gen)


class SignedSums(PairAggregate):
    """`columns` (count / total SQL over rows with a `sign`) per segment and `keys`, of the rows
    `rows(source)` makes of a relation of signed pairs."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        sets: SegmentSets,
        name: str,
        columns: dict[str, str],
        rows: Callable[[str], str],
        keys: Sequence[str] = (),
        spec: Any = (),
    ) -> None:
        self.con, self.sets, self.name, self.columns, self.rows, self.keys = con, sets, name, columns, rows, list(keys)
        self.spec = repr((sets.sets, columns, rows("source"), self.keys, spec))

    def sql(self, source: str) -> str:
        """SQL: the partials of relation `source` (signed pairs)."""
        return self.sets.aggregated(self.columns, self.rows(source), self.keys)

    def build(self, table: str, source: str, kind: str = "") -> None:
        self.con.execute(f"CREATE OR REPLACE {kind} TABLE {table} AS {self.sql(source)}")

    def apply(self, table: str, delta: str) -> None:
        self.build(f"{self.name}_delta", delta, "TEMP")
        self.con.execute(f"CREATE OR REPLACE TABLE {table} AS {self.merged([table, f'{self.name}_delta'])}")

    def merged(self, tables: Sequence[str]) -> str:
        """SQL: the sums of `tables` (partials of this aggregate) per segment and key, without the
        groups left with no row (a count that came back to zero)."""
        keys = ", ".join(["segment", *self.keys])
        sums = ", ".join(f"{'fsum' if is_total(sql) else 'sum'}({c}) AS {c}" for c, sql in self.columns.items())
        union = " UNION ALL BY NAME ".join(f"SELECT * FROM {t}" for t in tables)
        counts = [c for c, sql in self.columns.items() if not is_total(sql)]
        having = " OR ".join(f"sum({c}) <> 0" for c in counts) or "TRUE"
        return f"SELECT {keys}, {sums} FROM ({union}) GROUP BY {keys} HAVING {having}"

    def partials_over_pairs(self, where: str, kept: KeptPairs | None) -> list[str]:
        """The tables of this aggregate's partials of `pairs WHERE where`. With `kept` (where is
        then every pair or the rate samples), the rate samples' partials are kept between looks,
        and the other pairs (quota samples: few, and moving with the bottom-k) are added afresh."""
        if kept is None:
            self.build(f"{self.name}_whole", f"(SELECT 1::TINYINT AS sign, * FROM pairs WHERE {where})", "TEMP")
            return [f"{self.name}_whole"]
        tables = [maintained(self.con, kept, self)]
        if where != RATE:
            self.build(f"{self.name}_rest", f"(SELECT 1::TINYINT AS sign, * FROM pairs WHERE NOT ({RATE}) AND {where})", "TEMP")
            tables.append(f"{self.name}_rest")
        return tables

    def over_pairs(self, where: str, kept: KeptPairs | None) -> str:
        """SQL: this aggregate of `pairs WHERE where` (see `partials_over_pairs`)."""
        return self.merged(self.partials_over_pairs(where, kept))


__all__ = [
    "RATE",
    "KeptAggregate",
    "KeptPairs",
    "PairAggregate",
    "SignedSums",
    "StoredCounts",
    "is_total",
    "kept_table",
    "maintained",
    "rate_pairs",
    "signed_count",
    "signed_total",
]
