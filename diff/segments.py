"""Segments as DuckDB grouping sets: `all`, each configured field, and asked-for combinations.
A segment's name is `field=value[&field=value]`, or `all`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shadowdiff.schemas.sql import ident, literal

ALL = "all"


class SegmentSets:
    def __init__(self, fields: Sequence[str], combinations: Sequence[Sequence[str]]) -> None:
        self.fields = list(fields)
        sets: list[tuple[str, ...]] = [()] + [(f,) for f in self.fields]
        for combo in combinations:
            t = tuple(f for f in self.fields if f in combo)
            if len(t) > 1 and t not in sets:
                sets.append(t)
        self.sets = sets

    @property
    def columns(self) -> list[str]:
        return [ident("seg_" + f) for f in self.fields]

    def group_by(self, extra: Sequence[str] = ()) -> str:
        """GROUP BY clause; `extra` columns are grouped in every set (e.g. the minute)."""
        parts = []
        for s in self.sets:
            cols = [ident("seg_" + f) for f in s] + list(extra)
            parts.append("(" + ", ".join(cols) + ")")
        return "GROUP BY GROUPING SETS (" + ", ".join(parts) + ")"

    def select(self) -> str:
        """Segment columns plus GROUPING_ID, to tell a NULL from 'not grouped'."""
        if not self.fields:
            return "0 AS gid"
        return ", ".join(self.columns) + f", GROUPING_ID({', '.join(self.columns)}) AS gid"

    def aggregated(self, columns: dict[str, str], source: str, extra: Sequence[str] = ()) -> str:
        """SQL: one row per segment (named) and `extra` group of relation `source`, with `columns`
        (name: aggregate SQL) aggregated."""
        inner = ", ".join(f"{sql} AS {name}" for name, sql in columns.items())
        keys = "".join(f"{e}, " for e in extra)
        return f"""SELECT {self.name_sql()} AS segment, {keys}{", ".join(columns)} FROM (
                   SELECT {self.select()}, {keys}{inner} FROM {source} {self.group_by(list(extra))})"""

    def name(self, row: dict[str, Any]) -> str:
        """Segment name of a result row from `select()`."""
        n = len(self.fields)
        gid = int(row["gid"])
        parts = []
        for i, f in enumerate(self.fields):
            grouped = not (gid >> (n - 1 - i)) & 1
            if grouped:
                parts.append(f"{f}={row['seg_' + f]}")
        return "&".join(parts) if parts else ALL

    def name_sql(self, gid: str = "gid") -> str:
        """SQL for the segment name of a result row from `select()` (the same as `name`), so
        that large results (histograms: segments x bins) come back as columns, not rows."""
        n = len(self.fields)
        parts = [
            f"CASE WHEN ({gid} >> {n - 1 - i}) & 1 = 0 THEN {literal(f + '=')} || {ident('seg_' + f)} END"
            for i, f in enumerate(self.fields)
        ]
        return f"coalesce(nullif(concat_ws('&', {', '.join(parts)}), ''), '{ALL}')" if parts else f"'{ALL}'"

    def where(self, segment: str) -> str:
        """SQL predicate selecting one segment's rows (values are quoted)."""
        if segment == ALL:
            return "TRUE"
        conds = []
        for part in segment.split("&"):
            f, _, v = part.partition("=")
            conds.append(f"{ident('seg_' + f)} = {literal(v)}")
        return " AND ".join(conds)
