"""Aggregates kept in the judge's cache beside the kept pairs (diff/pairs.py), so that a look's
cost grows with the pairs it changed, not with the run.

An aggregate is a table of partial results keyed by segment (and whatever else it groups by).
Each look either finds it current, or applies the kept pairs' delta to it (when it was current
as of the look the delta starts from), or builds it whole from the kept pairs. The same
functions build it whole from a relation outside any cache, so a full re-judge and a look read
the same partials."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import duckdb

from shadowdiff.diff.exports import table_exists
from shadowdiff.diff.pairs import KeptPairs

# rate samples only: quota samples move in and out of `pairs` as the bottom-k changes
# (diff/pairs.keep_bottom_k), which no delta of the kept pairs records
RATE = "sampled_reason = 'rate'"

log = logging.getLogger(__name__)


def maintained(
    con: duckdb.DuckDBPyConnection,
    kept: KeptPairs,
    name: str,
    spec: str,
    build: Callable[[str, str], None],
    update: Callable[[str, str], str | None],
) -> str:
    """The table of aggregate `name` as of the kept pairs' look. `spec` says what it was built
    with (its parameters); another spec, a missing table or a delta that does not start where
    the aggregate stands means building it whole: `build(table, source)` fills `table` from the
    rate pairs of relation `source`; `update(table, delta)` applies the signed rows of `delta`,
    or builds the table whole itself and says why."""

    def update_from(table: str, since: int) -> str | None:
        if since != kept.from_gen:  # the delta starts at another look: it cannot bring this one up
            build(table, f"(SELECT 1::TINYINT AS sign, * FROM {kept.table} WHERE {RATE})")
            return f"the pairs' delta starts at look {kept.from_gen}, the aggregate stood at {since}"
        return update(table, f"(SELECT * FROM {kept.delta} WHERE {RATE})")

    return kept_since(
        con,
        f"{kept.table}:{name}",
        name,
        f"{kept.shape}|{spec}",
        kept.gen,
        lambda table: build(table, f"(SELECT 1::TINYINT AS sign, * FROM {kept.table} WHERE {RATE})"),
        update_from,
    )


def kept_since(
    con: duckdb.DuckDBPyConnection,
    key: str,
    name: str,
    spec: str,
    gen: int,
    build: Callable[[str], None],
    update: Callable[[str, int], str | None],
) -> str:
    """The table of aggregate `key` (logged as `name`) as of look `gen`, in one transaction:
    current; or brought up from the look it stood at by `update(table, since)`, which may build
    it whole itself and say why; or, with another `spec` or none kept, `build(table)`."""
    table = "kept_agg_" + hashlib.sha256(key.encode()).hexdigest()[:16]
    con.execute("CREATE TABLE IF NOT EXISTS kept_aggregates (name VARCHAR PRIMARY KEY, spec VARCHAR, gen INTEGER)")
    row = con.execute("SELECT spec, gen FROM kept_aggregates WHERE name = ?", [table]).fetchone()
    current = row is not None and row[0] == spec and table_exists(con, table)
    if current and row is not None and int(row[1]) == gen:
        return table
    con.execute("BEGIN")
    try:
        if current and row is not None and int(row[1]) < gen:
            rebuilt = update(table, int(row[1]))
            if rebuilt:
                log.debug("%s: built whole at look %s (%s)", name, gen, rebuilt)
            else:
                log.debug("%s: updated from look %s to %s", name, row[1], gen)
        else:
            build(table)
            log.debug("%s: built whole at look %s", name, gen)
        con.execute("INSERT OR REPLACE INTO kept_aggregates VALUES (?, ?, ?)", [table, spec, gen])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return table


__all__ = ["RATE", "kept_since", "maintained"]
