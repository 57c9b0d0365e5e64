"""The mergeable partials behind the feature checks (diff/features.py), over a relation of
traffic rows with columns `side` ('cur' or 'ref'), the segment columns, `f_<feature>`, `part`,
`offset` and `sign` (+1 a row added, -1 a row taken back):

- moments per side and segment: counts, compensated sums of values and squares, min and max;
- a hash sample of each side's rows, at a power-of-two rate: when a side outgrows its sample,
  the next rate keeps a subset of the rows kept so far, so the sample follows the run's growth
  without reading it again;
- categorical value counts per side and segment;
- counts of current values outside the reference's range.

A full judge builds them as temporary tables; a judge's cache keeps them between looks
(`FeatureParts.kept`) and adds the rows each look added, so both read the same partials."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from shadowdiff.diff.aggregate import power_of_two_level
from shadowdiff.diff.exports import changed_since, replaced_since
from shadowdiff.diff.kept import KeptAggregate, StoredCounts, kept_table
from shadowdiff.diff.segments import ALL, SegmentSets
from shadowdiff.schemas.sql import ident, literal

SIDES = ("cur", "ref")
_HASH = 'hash(part, "offset")'


def sample_level(n: int, max_rows: int) -> int:
    """The sample keeps rows whose hash is a multiple of 2**level: the lowest level that keeps
    at most about `max_rows` of a side's `n` rows (all of them up to `max_rows`)."""
    return power_of_two_level(n, max_rows)


@dataclass(frozen=True)
class PartTables:
    moments: str  # segment, side, n_all, n_/s_/q_/lo_/hi_<feature>
    sample: str  # side, segment columns, f_<numeric feature>, part, offset
    cats: str  # segment, side, feature, v, k


class FeatureParts:
    def __init__(
        self, con: duckdb.DuckDBPyConnection, sets: SegmentSets, numeric: list[str], categorical: list[str], max_rows: int
    ) -> None:
        self.con, self.sets, self.numeric, self.categorical, self.max_rows = con, sets, numeric, categorical, max_rows

    @property
    def spec(self) -> str:
        return repr((self.sets.sets, self.numeric, self.categorical, self.max_rows))

    def _moments_sql(self, source: str) -> str:
        cols = {"n_all": "sum(sign)::BIGINT"}
        for n in self.numeric:
            c = ident("f_" + n)
            cols[ident("n_" + n)] = f"coalesce(sum(sign) FILTER (WHERE {c} IS NOT NULL), 0)::BIGINT"
            # compensated sums: a look's sums added to those kept agree with one pass to the last digits
            cols[ident("s_" + n)] = f"coalesce(fsum(sign * {c}), 0)::DOUBLE"
            cols[ident("q_" + n)] = f"coalesce(fsum(sign * {c} * {c}), 0)::DOUBLE"
            cols[ident("lo_" + n)] = f"min({c})"
            cols[ident("hi_" + n)] = f"max({c})"
        return self.sets.aggregated(cols, source, ["side"])

    def _merge_moments(self, table: str, delta: str) -> None:
        merged = ["sum(n_all)::BIGINT AS n_all"]
        for n in self.numeric:
            merged += [
                f"sum({ident('n_' + n)})::BIGINT AS {ident('n_' + n)}",
                f"fsum({ident('s_' + n)}) AS {ident('s_' + n)}",
                f"fsum({ident('q_' + n)}) AS {ident('q_' + n)}",
                f"min({ident('lo_' + n)}) AS {ident('lo_' + n)}",
                f"max({ident('hi_' + n)}) AS {ident('hi_' + n)}",
            ]
        self.con.execute(
            f"""CREATE OR REPLACE TABLE {table} AS SELECT segment, side, {", ".join(merged)} FROM (
                SELECT * FROM {table} UNION ALL BY NAME SELECT * FROM ({self._moments_sql(delta)})) GROUP BY segment, side"""
        )

    def levels(self, moments: str) -> dict[str, int]:
        rows = self.con.execute(f"SELECT side, n_all FROM {moments} WHERE segment = '{ALL}'").fetchall()
        have = {str(side): int(n) for side, n in rows}
        return {side: sample_level(have.get(side, 0), self.max_rows) for side in SIDES}

    def _sample_sql(self, source: str, levels: dict[str, int]) -> str:
        cols = "".join(c + ", " for c in self.sets.columns) + "".join(ident("f_" + n) + ", " for n in self.numeric)
        keep = " OR ".join(f"(side = '{side}' AND {_HASH} % {2**level} = 0)" for side, level in levels.items())
        return f'SELECT side, {cols}part, "offset" FROM {source} WHERE {keep}'

    def _cats_sql(self, source: str) -> str:
        def counts(n: str) -> str:
            values = f"(SELECT *, CAST({ident('f_' + n)} AS VARCHAR) AS v FROM {source})"
            return self.sets.aggregated({"k": "sum(sign)::BIGINT"}, values, ["side", "v"])

        parts = [f"SELECT segment, side, {literal(n)} AS feature, v, k FROM ({counts(n)})" for n in self.categorical]
        empty = """SELECT NULL::VARCHAR AS segment, NULL::VARCHAR AS side, NULL::VARCHAR AS feature,
                   NULL::VARCHAR AS v, 0::BIGINT AS k WHERE FALSE"""
        return " UNION ALL ".join(parts) if parts else empty

    def whole(self, rows: str) -> PartTables:
        """Temporary partials over relation `rows` (every row with sign +1)."""
        con = self.con
        con.execute(f"CREATE OR REPLACE TEMP TABLE feat_moments AS {self._moments_sql(rows)}")
        con.execute(f"CREATE OR REPLACE TEMP TABLE feat_sample AS {self._sample_sql(rows, self.levels('feat_moments'))}")
        con.execute(f"CREATE OR REPLACE TEMP TABLE feat_cats AS {self._cats_sql(rows)}")
        return PartTables("feat_moments", "feat_sample", "feat_cats")

    def kept(self, gen: int, shape: str, rows_of: Callable[[str], str]) -> PartTables:
        """The partials kept in a judge's cache as of look `gen`. `rows_of(relation)` is the rows
        relation over a relation of stored requests (`requests`, or the rows a look added);
        `shape` what else they depend on (segment pooling, the reference)."""
        table = kept_table(self.con, "features", _KeptParts(self, shape, rows_of), gen)
        return PartTables(table, table + "_s", table + "_c")

    def out_of_range(
        self, ranges: dict[str, tuple[float, float]], rows: str, kept: tuple[int, str, Callable[[str], str]] | None
    ) -> dict[str, dict[str, int]]:
        """Per numeric feature and segment, the current values outside the reference's range."""
        if not ranges:
            return {}

        def outside(n: str, lo: float, hi: float) -> str:
            c = ident("f_" + n)
            return f"coalesce(sum(sign) FILTER (WHERE {c} < {lo!r} OR {c} > {hi!r}), 0)::BIGINT"

        cols = {ident("k_" + n): outside(n, lo, hi) for n, (lo, hi) in ranges.items()}

        def counts(source: str) -> str:
            return self.sets.aggregated(cols, f"(SELECT * FROM {source} WHERE side = 'cur')")

        con = self.con
        if kept is None:
            table = "feat_out_of_range"
            con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {counts(rows)}")
        else:
            gen, shape, rows_of = kept
            # the reference's range is part of what the counts mean: another range, counted anew
            spec = f"{shape}|{self.spec}|{sorted(ranges.items())!r}"
            table = kept_table(con, "features_out_of_range", _KeptOutOfRange(con, spec, cols, counts, rows_of), gen)
        out: dict[str, dict[str, int]] = {n: {} for n in ranges}
        cur = con.execute(f"SELECT * FROM {table}")
        names = [d[0] for d in cur.description]
        for row in cur.fetchall():
            r = dict(zip(names, row, strict=True))
            for n in ranges:
                out[n][str(r["segment"])] = int(r["k_" + n])
        return out


class _KeptParts(KeptAggregate):
    """The features' moments, sample and category counts, kept as of a look."""

    name = "features"

    def __init__(self, parts: FeatureParts, shape: str, rows_of: Callable[[str], str]) -> None:
        self.parts = parts
        self.rows_of = rows_of
        self.spec = f"{shape}|{parts.spec}"

    def build(self, table: str) -> None:
        parts, con = self.parts, self.parts.con
        rows = self.rows_of("requests")
        con.execute(f"CREATE OR REPLACE TABLE {table} AS {parts._moments_sql(rows)}")
        con.execute(f"CREATE OR REPLACE TABLE {table}_s AS {parts._sample_sql(rows, parts.levels(table))}")
        con.execute(f"CREATE OR REPLACE TABLE {table}_c AS {parts._cats_sql(rows)}")

    def update(self, table: str, since: int) -> str | None:
        parts, con = self.parts, self.parts.con
        if n := replaced_since(con, "requests", since):
            self.build(table)  # a row taken back: min and max cannot follow it
            return f"{n} stored requests replaced by an earlier folder's copy"
        delta = self.rows_of(f"({changed_since('requests', since)})")
        con.execute(f"CREATE OR REPLACE TEMP TABLE feat_delta AS {delta}")
        before = parts.levels(table)
        parts._merge_moments(table, "feat_delta")
        after = parts.levels(table)
        for side in SIDES:
            if after[side] > before[side]:  # the side outgrew its sample: keep a subset of it
                con.execute(f"DELETE FROM {table}_s WHERE side = '{side}' AND {_HASH} % {2 ** after[side]} <> 0")
        con.execute(f"INSERT INTO {table}_s {parts._sample_sql('feat_delta', after)}")
        con.execute(
            f"""CREATE OR REPLACE TABLE {table}_c AS SELECT segment, side, feature, v, sum(k)::BIGINT AS k FROM (
                SELECT * FROM {table}_c UNION ALL SELECT * FROM ({parts._cats_sql("feat_delta")}))
                GROUP BY segment, side, feature, v HAVING sum(k) <> 0"""
        )
        return None


class _KeptOutOfRange(StoredCounts):
    """Per segment, the current values outside the reference's range, kept as of a look."""

    name = "features_out_of_range"
    stored = "requests"
    keys = ("segment",)

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        spec: str,
        cols: dict[str, str],
        counts: Callable[[str], str],
        rows_of: Callable[[str], str],
    ) -> None:
        super().__init__(con)
        self.spec, self.counted, self._counts, self.rows_of = spec, tuple(cols), counts, rows_of

    def counts(self, rows: str) -> str:
        return self._counts(self.rows_of(rows))


__all__ = ["SIDES", "FeatureParts", "PartTables", "sample_level"]
