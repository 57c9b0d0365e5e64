"""Feature drift and data quality per segment: current traffic vs a reference (an event-time
window of the run, or a recording). Exact counts (nulls, ranges, categories) on all rows;
distribution grids on a deterministic hash sample capped at `max_rows` (plenty for a distance)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import polars as pl

from diff.aggregate import DIST_GRID, _rows
from diff.drift import SMALL, DriftResult, categorical_drift, numeric_drift
from diff.load import RunInfo, ident
from diff.segments import SegmentSets
from schemas.policy import Reference


@dataclass(frozen=True)
class FeatureStats:
    segment: str
    feature: str
    kind: str  # numeric | categorical
    n_cur: int
    nulls_cur: int
    n_ref: int
    nulls_ref: int
    out_of_range: int  # numeric: outside the reference [min, max]
    new_category: int  # categorical: values the reference never had
    new_values: list[str]
    drift: DriftResult | None


def _path_expr(path: str) -> pl.Expr:
    steps = [s for s in path.split(".") if s]
    expr = pl.col(steps[0])
    for s in steps[1:]:
        expr = expr.struct.field(s)
    return expr


def load_reference_file(path: Path, info: RunInfo) -> pl.DataFrame:
    """Envelopes of a recording mapped to segment and feature columns like the run's."""
    env = info.config.get("envelope", {})
    rows = []
    with path.open("rb") as fh:
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            rows = frame.to_dicts()
        else:
            rows = [orjson.loads(line) for line in fh if line.strip()]
    seg_cfg = info.config.get("segments", {})
    hb = seg_cfg.get("hour_buckets")
    hour_map = {h: b for b, hs in (hb or {}).get("buckets", {}).items() for h in hs}

    def get(obj: Any, p: str) -> Any:
        for s in [x for x in p.split(".") if x]:
            obj = obj.get(s) if isinstance(obj, dict) else None
        return obj

    out: dict[str, list[Any]] = {("seg_" + f): [] for f in info.segment_fields}
    for n in info.numeric + info.categorical:
        out["f_" + n] = []
    for row in rows:
        segs = get(row, env.get("segments", "segments")) or {}
        for f in seg_cfg.get("fields", []):
            v = segs.get(f) if isinstance(segs, dict) else None
            out["seg_" + f].append("(missing)" if v is None else str(v))
        if hb:
            t = get(row, env.get("event_time", "event_time"))
            hour = None
            if isinstance(t, int | float):
                hour = datetime.fromtimestamp(t / 1000).astimezone().utctimetuple().tm_hour
            elif isinstance(t, str):
                hour = datetime.fromisoformat(t).hour
            out["seg_" + hb.get("name", "daypart")].append(hour_map.get(hour, "(missing)"))
        inp = get(row, env.get("input", "input")) or {}
        for n in info.numeric:
            v = inp.get(n)
            out["f_" + n].append(float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None)
        for n in info.categorical:
            v = inp.get(n)
            out["f_" + n].append(None if v is None else str(v))
    schema = {k: (pl.Float64 if k[2:] in info.numeric and k.startswith("f_") else pl.Utf8) for k in out}
    return pl.DataFrame(out, schema=schema)


class FeatureTables:
    """Creates `cur_f` and `ref_f` views (segment columns + f_<feature>) on a connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection, info: RunInfo, sets: SegmentSets, reference: Reference | None) -> None:
        self.con = con
        self.info = info
        self.sets = sets
        segs = ", ".join(f"p.{c}" for c in sets.columns)
        feats = ", ".join(f"r.features.{ident(n)} AS {ident('f_' + n)}" for n in info.numeric + info.categorical)
        base = f"""SELECT {segs}{"," if segs else ""} {feats}, p.event_time, p.part, p."offset"
                   FROM pairs p JOIN requests r USING (source, part, "offset")"""
        self.has_reference = reference is not None
        if reference is None:
            con.execute(f"CREATE OR REPLACE TEMP VIEW cur_f AS {base}")
            con.execute(f"CREATE OR REPLACE TEMP VIEW ref_f AS {base} LIMIT 0")
        elif reference.file is not None:
            ref = load_reference_file(reference.file, info)
            con.register("ref_file_frame", ref.to_arrow())
            con.execute(f"CREATE OR REPLACE TEMP VIEW cur_f AS {base}")
            con.execute('CREATE OR REPLACE TEMP VIEW ref_f AS SELECT *, 0 AS part, 0 AS "offset" FROM ref_file_frame')
        else:
            win = f"p.event_time >= TIMESTAMPTZ '{reference.start}' AND p.event_time < TIMESTAMPTZ '{reference.end}'"
            con.execute(f"CREATE OR REPLACE TEMP VIEW ref_f AS {base} WHERE {win}")
            con.execute(f"CREATE OR REPLACE TEMP VIEW cur_f AS {base} WHERE NOT ({win})")

    def _sample_clause(self, table: str, max_rows: int) -> str:
        (n,) = self.con.execute(f"SELECT count(*) FROM {table}").fetchone() or (0,)
        if n <= max_rows:
            return "TRUE"
        k = int(np.ceil(n / max_rows))
        return f'hash(part, "offset") % {k} = 0'

    def _raw(self, table: str, feature: str, seg: str, sample: str) -> list[float]:
        """Raw values of one feature in one segment (for the small-sample tests)."""
        c = ident("f_" + feature)
        sql = f"SELECT {c} FROM {table} WHERE {self.sets.where(seg)} AND {c} IS NOT NULL AND {sample}"
        return [float(v) for (v,) in self.con.execute(sql).fetchall()]

    def collect(self, max_rows: int = 1_000_000) -> list[FeatureStats]:
        con, sets, info = self.con, self.sets, self.info
        g = "[" + ", ".join(f"{x:.6f}" for x in DIST_GRID) + "]"
        results: list[FeatureStats] = []
        num = info.numeric
        # exact counts and ranges, one scan per side for all features
        ranges = {}
        if num and self.has_reference:
            r = _rows(
                con,
                "SELECT "
                + ", ".join(
                    f"min({ident('f_' + n)}) AS {ident('lo_' + n)}, max({ident('f_' + n)}) AS {ident('hi_' + n)}" for n in num
                )
                + " FROM ref_f",
            )[0]
            ranges = {n: (r["lo_" + n], r["hi_" + n]) for n in num}
        sides = {}
        for side in ("cur_f", "ref_f"):
            if side == "ref_f" and not self.has_reference:
                continue
            sample = self._sample_clause(side, max_rows)
            aggs = ["count(*) AS n_all"]
            for n in num:
                c = ident("f_" + n)
                aggs.append(f"count({c}) AS {ident('n_' + n)}")
                aggs.append(f"stddev_pop({c}) AS {ident('sd_' + n)}")
                aggs.append(f"count(DISTINCT {c}) FILTER (WHERE {sample}) AS {ident('u_' + n)}")
                aggs.append(f"quantile_cont({c}, {g}) FILTER (WHERE {sample}) AS {ident('q_' + n)}")
                if side == "cur_f" and n in ranges and ranges[n][0] is not None:
                    lo, hi = ranges[n]
                    aggs.append(f"count(*) FILTER (WHERE {c} < {lo!r} OR {c} > {hi!r}) AS {ident('oor_' + n)}")
            sides[side] = {
                info_seg: row
                for info_seg, row in (
                    (sets.name(r), r)
                    for r in _rows(con, f"SELECT {sets.select()}, {', '.join(aggs)} FROM {side} {sets.group_by()}")
                )
            }
        cats: dict[tuple[str, str, str], dict[str | None, int]] = {}
        for side in sides:
            for n in info.categorical:
                c = ident("f_" + n)
                rows = _rows(con, f"SELECT {sets.select()}, {c} AS v, count(*) AS k FROM {side} {sets.group_by([c])}")
                for r in rows:
                    cats.setdefault((side, n, sets.name(r)), {})[r["v"]] = r["k"]
        for seg, cur in sides["cur_f"].items():
            ref = sides.get("ref_f", {}).get(seg)
            for n in num:
                n_cur = int(cur["n_" + n])
                drift = None
                n_ref = int(ref["n_" + n]) if ref else 0
                if ref and n_ref and n_cur and cur["q_" + n] and ref["q_" + n]:
                    raw_ref = raw_cur = None
                    if n_ref <= SMALL:
                        raw_ref = self._raw("ref_f", n, seg, "TRUE")
                        raw_cur = self._raw("cur_f", n, seg, self._sample_clause("cur_f", max_rows))
                    if (ref["u_" + n] or 0) <= 5:
                        rc = cats_from(con, "ref_f", n, sets, seg)
                        cc = cats_from(con, "cur_f", n, sets, seg)
                        drift = categorical_drift(rc, cc)
                    else:
                        drift = numeric_drift(
                            DIST_GRID,
                            ref["q_" + n],
                            cur["q_" + n],
                            float(ref["sd_" + n] or 0),
                            n_ref,
                            n_cur,
                            raw_ref,
                            raw_cur,
                        )
                results.append(
                    FeatureStats(
                        seg,
                        n,
                        "numeric",
                        int(cur["n_all"]),
                        int(cur["n_all"]) - n_cur,
                        int(ref["n_all"]) if ref else 0,
                        (int(ref["n_all"]) - n_ref) if ref else 0,
                        int(cur.get("oor_" + n) or 0),
                        0,
                        [],
                        drift,
                    )
                )
            for n in info.categorical:
                cc_all = cats.get(("cur_f", n, seg), {})
                rc_all = cats.get(("ref_f", n, seg), {})
                nulls_c, nulls_r = cc_all.get(None, 0), rc_all.get(None, 0)
                cc = {k: v for k, v in cc_all.items() if k is not None}
                rc = {k: v for k, v in rc_all.items() if k is not None}
                new_vals = sorted(v for v in cc if v not in rc) if ref else []
                drift = categorical_drift(rc, cc) if ref and rc and cc else None
                results.append(
                    FeatureStats(
                        seg,
                        n,
                        "categorical",
                        int(cur["n_all"]),
                        nulls_c,
                        int(ref["n_all"]) if ref else 0,
                        nulls_r,
                        0,
                        sum(cc[v] for v in new_vals),
                        new_vals[:20],
                        drift,
                    )
                )
        return results


def cats_from(con: duckdb.DuckDBPyConnection, table: str, feature: str, sets: SegmentSets, seg: str) -> dict[str, int]:
    c = ident("f_" + feature)
    rows = con.execute(
        f"SELECT CAST({c} AS VARCHAR), count(*) FROM {table} WHERE {sets.where(seg)} AND {c} IS NOT NULL GROUP BY 1"
    ).fetchall()
    return {str(v): int(k) for v, k in rows}
