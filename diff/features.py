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

from diff.aggregate import _rows, histograms
from diff.drift import SMALL, DriftResult, categorical_drift, numeric_drift_hist
from diff.load import RunInfo
from diff.segments import ALL, SegmentSets
from diff.sql import ident
from schemas.paths import getter
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
    get_segments = getter(env.get("segments", "segments"))
    get_time = getter(env.get("event_time", "event_time"))
    get_input = getter(env.get("input", "input"))
    seg_cfg = info.config.get("segments", {})
    hb = seg_cfg.get("hour_buckets")
    hour_map = {h: b for b, hs in (hb or {}).get("buckets", {}).items() for h in hs}

    out: dict[str, list[Any]] = {("seg_" + f): [] for f in info.segment_fields}
    for n in info.numeric + info.categorical:
        out["f_" + n] = []
    for row in rows:
        segs = get_segments(row) or {}
        for f in seg_cfg.get("fields", []):
            v = segs.get(f) if isinstance(segs, dict) else None
            out["seg_" + f].append("(missing)" if v is None else str(v))
        if hb:
            t = get_time(row)
            hour = None
            if isinstance(t, int | float):
                hour = datetime.fromtimestamp(t / 1000).astimezone().utctimetuple().tm_hour
            elif isinstance(t, str):
                hour = datetime.fromisoformat(t).hour
            out["seg_" + hb.get("name", "daypart")].append(hour_map.get(hour, "(missing)"))
        inp = get_input(row) or {}
        for n in info.numeric:
            v = inp.get(n)
            out["f_" + n].append(float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None)
        for n in info.categorical:
            v = inp.get(n)
            out["f_" + n].append(None if v is None else str(v))
    schema = {k: (pl.Float64 if k[2:] in info.numeric and k.startswith("f_") else pl.Utf8) for k in out}
    return pl.DataFrame(out, schema=schema)


class FeatureTables:
    """Creates `cur_f` and `ref_f` views (segment columns + f_<feature>) on a connection.
    Features describe the traffic, so they are read from every stored request (one columnar
    scan per query, no join with the outputs)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        info: RunInfo,
        sets: SegmentSets,
        reference: Reference | None,
        segment_exprs: list[str],
    ) -> None:
        self.con = con
        self.info = info
        self.sets = sets
        segs = ", ".join(segment_exprs)
        feats = ", ".join(f"r.features.{ident(n)} AS {ident('f_' + n)}" for n in info.numeric + info.categorical)
        # rate samples only: per-segment quotas oversample rare segments on purpose, which would
        # show up as drift of e.g. the hour of day in every segment that mixes them
        base = f"""SELECT {segs}{"," if segs else ""} {feats}, r.event_time, r.part, r."offset" FROM requests r
                   WHERE r.sampled_reason = 'rate'"""
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
            win = f"r.event_time >= TIMESTAMPTZ '{reference.start}' AND r.event_time < TIMESTAMPTZ '{reference.end}'"
            con.execute(f"CREATE OR REPLACE TEMP VIEW ref_f AS {base} AND {win}")
            con.execute(f"CREATE OR REPLACE TEMP VIEW cur_f AS {base} AND NOT ({win})")

    @classmethod
    def from_views(cls, con: duckdb.DuckDBPyConnection, info: RunInfo, sets: SegmentSets) -> FeatureTables:
        """Over `cur_f` and `ref_f` views the caller made (e.g. two frames outside any run)."""
        self = cls.__new__(cls)
        self.con, self.info, self.sets, self.has_reference = con, info, sets, True
        return self

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

    def _moments(self, side: str, distinct: bool) -> dict[str, dict[str, Any]]:
        """Cheap exact aggregates per segment for every feature of one side, in one scan.
        `distinct` adds each feature's approximate number of values (`u_`), which only the
        reference's side needs (to tell a coded feature from a measured one): it costs as much
        as the rest of the scan."""
        aggs = ["count(*) AS n_all"]
        for n in self.info.numeric:
            c = ident("f_" + n)
            aggs += [
                f"count({c}) AS {ident('n_' + n)}",
                f"stddev_pop({c}) AS {ident('sd_' + n)}",
                f"avg({c}) AS {ident('mean_' + n)}",
                f"min({c}) AS {ident('min_' + n)}",
                f"max({c}) AS {ident('max_' + n)}",
            ]
            if distinct:
                aggs.append(f"approx_count_distinct({c}) AS {ident('u_' + n)}")
        sql = f"SELECT {self.sets.select()}, {', '.join(aggs)} FROM {side} {self.sets.group_by()}"
        return {self.sets.name(r): r for r in _rows(self.con, sql)}

    def _sampled(self, side: str, max_rows: int) -> str:
        """`side`, or a deterministic hash sample of it when it has more than `max_rows` rows:
        a million rows pin a distribution distance to ~0.001, and a 10M-row run then costs a
        tenth per histogram. Counts of nulls and ranges always use every row."""
        clause = self._sample_clause(side, max_rows)
        if clause == "TRUE":
            return side
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {side}_s AS SELECT * FROM {side} WHERE {clause}")
        return f"{side}_s"

    def _histograms(self, side: str, feature: str, lo: float, width: float) -> dict[str, np.ndarray]:
        c = ident("f_" + feature)
        b = f"least(greatest(floor(({c} - {lo!r}) / {width!r}), 0), {BINS - 1})::INT"
        sql = f"""SELECT {self.sets.select()}, {b} AS bin, count(*) AS k FROM {side} WHERE {c} IS NOT NULL
                  {self.sets.group_by([b])}"""
        return histograms(self.con, self.sets, sql, BINS)

    def collect(self, max_rows: int = 1_000_000) -> list[FeatureStats]:
        con, sets, info = self.con, self.sets, self.info
        results: list[FeatureStats] = []
        num = info.numeric
        sides = {"cur_f": self._moments("cur_f", distinct=False)}
        if self.has_reference:
            sides["ref_f"] = self._moments("ref_f", distinct=True)
        ref_all = sides.get("ref_f", {}).get(ALL)
        cur_all = sides["cur_f"].get(ALL)
        hists: dict[str, tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
        sampled = {side: self._sampled(side, max_rows) for side in sides} if num else {}
        out_of_range: dict[str, str] = {}  # feature -> its count of values outside the reference's range
        for n in num:
            if not ref_all or not cur_all or not ref_all["n_" + n] or not cur_all["n_" + n]:
                continue
            lo, hi = _bin_range(ref_all, cur_all, n)
            width = (hi - lo) / BINS
            hists[n] = (width, self._histograms(sampled["ref_f"], n, lo, width), self._histograms(sampled["cur_f"], n, lo, width))
            c = ident("f_" + n)
            rlo, rhi = ref_all["min_" + n], ref_all["max_" + n]
            out_of_range[n] = f"count(*) FILTER (WHERE {c} < {rlo!r} OR {c} > {rhi!r})"
        oor: dict[str, dict[str, int]] = {n: {} for n in out_of_range}
        if out_of_range:  # every feature in one scan of the current side
            counts = ", ".join(f"{sql} AS {ident('k_' + n)}" for n, sql in out_of_range.items())
            for r in _rows(con, f"SELECT {sets.select()}, {counts} FROM cur_f {sets.group_by()}"):
                for n in out_of_range:
                    oor[n][sets.name(r)] = int(r["k_" + n])
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
                n_ref = int(ref["n_" + n]) if ref else 0
                drift = None
                if ref and n_ref and n_cur and n in hists:
                    width, rh, ch = hists[n]
                    if (ref["u_" + n] or 0) <= 5:
                        drift = categorical_drift(cats_from(con, "ref_f", n, sets, seg), cats_from(con, "cur_f", n, sets, seg))
                    elif seg in rh and seg in ch:
                        raw_ref = raw_cur = None
                        if n_ref <= SMALL:
                            raw_ref = self._raw("ref_f", n, seg, "TRUE")
                            raw_cur = self._raw("cur_f", n, seg, self._sample_clause("cur_f", max_rows))
                        drift = numeric_drift_hist(width, rh[seg], ch[seg], float(ref["sd_" + n] or 0), raw_ref, raw_cur)
                results.append(
                    FeatureStats(
                        seg,
                        n,
                        "numeric",
                        int(cur["n_all"]),
                        int(cur["n_all"]) - n_cur,
                        int(ref["n_all"]) if ref else 0,
                        (int(ref["n_all"]) - n_ref) if ref else 0,
                        oor.get(n, {}).get(seg, 0),
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


BINS = 1000


def _bin_range(ref: dict[str, Any], cur: dict[str, Any], n: str) -> tuple[float, float]:
    """Shared bin range: both sides' mean ± 6 sd, inside the observed min..max, rounded to 6
    significant digits so that last-bit differences of parallel sums cannot move an edge."""
    lo = min(ref["mean_" + n] - 6 * (ref["sd_" + n] or 0), cur["mean_" + n] - 6 * (cur["sd_" + n] or 0))
    hi = max(ref["mean_" + n] + 6 * (ref["sd_" + n] or 0), cur["mean_" + n] + 6 * (cur["sd_" + n] or 0))
    lo = max(lo, min(ref["min_" + n], cur["min_" + n]))
    hi = min(hi, max(ref["max_" + n], cur["max_" + n]))
    lo, hi = float(f"{lo:.6g}"), float(f"{hi:.6g}")
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi * (1 + 1e-9) + 1e-12


def cats_from(con: duckdb.DuckDBPyConnection, table: str, feature: str, sets: SegmentSets, seg: str) -> dict[str, int]:
    c = ident("f_" + feature)
    rows = con.execute(
        f"SELECT CAST({c} AS VARCHAR), count(*) FROM {table} WHERE {sets.where(seg)} AND {c} IS NOT NULL GROUP BY 1"
    ).fetchall()
    return {str(v): int(k) for v, k in rows}
