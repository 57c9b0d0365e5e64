"""Feature drift and data quality per segment: current traffic vs a reference (an event-time
window of the run, or a recording). Exact counts (nulls, ranges, categories) on all rows;
distribution grids on a deterministic hash sample of about `max_rows` rows a side (plenty for a
distance)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from shadowdiff.diff.aggregate import _rows, histograms
from shadowdiff.diff.drift import SMALL, DriftResult, categorical_drift, numeric_drift_hist
from shadowdiff.diff.exports import cache_generation
from shadowdiff.diff.feature_parts import SIDES, FeatureParts, PartTables
from shadowdiff.diff.load import RunInfo
from shadowdiff.diff.segments import ALL, SegmentSets
from shadowdiff.schemas.envelope import Decoder, recording
from shadowdiff.schemas.policy import Reference
from shadowdiff.schemas.records import DeadLetter
from shadowdiff.schemas.sql import ident


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
    """Envelopes of a recording mapped to segment and feature columns like the run's: read and
    decoded by the replay's own codec (`schemas.envelope`), so an offset timestamp lands in the
    same UTC hour bucket and a nested categorical is null, as in the traffic it is compared
    with. Envelopes the replay would dead-letter are left out of the sample as well."""
    decoder = Decoder(
        info.run.envelope,
        info.run.features,
        info.run.segments,
        max_bytes=2**62,  # a reference sample is the user's own file: no size limit
        name=f"{info.run_id} reference",
    )
    layout = decoder.layout
    rows = []
    stamp = int(path.stat().st_mtime * 1000)  # an envelope without a time, as the replay of a file reads it
    for n, value in recording(path):
        row = decoder.decode_record(str(path), 0, n, None, value, stamp, "reference")
        if not isinstance(row, DeadLetter):
            rows.append(row)
    out: dict[str, list[Any]] = {}
    for k, name in enumerate(layout.segment_names):
        values = (r[layout.segments.start + k] for r in rows)
        out["seg_" + name] = ["(missing)" if v is None else v for v in values]
    for k, name in enumerate((*layout.numeric, *layout.categorical)):
        out["f_" + name] = [r[layout.features.start + k] for r in rows]
    schema = {k: (pl.Float64 if k.startswith("f_") and k[2:] in layout.numeric else pl.Utf8) for k in out}
    return pl.DataFrame(out, schema=schema)


# the rows of the `cur_f` and `ref_f` views with their side, as the partials read them
_BOTH_SIDES = """(SELECT 'cur' AS side, *, 1::TINYINT AS sign FROM cur_f
                  UNION ALL BY NAME SELECT 'ref' AS side, *, 1::TINYINT AS sign FROM ref_f)"""


class FeatureTables:
    """Feature statistics of the run's traffic per segment: the current side against the
    reference. Features describe the traffic, so they are read from every stored request (no
    join with the outputs), through the mergeable partials of diff/feature_parts.py. On a
    judge's cache with a reference window (or none) those partials are kept between looks.
    Also creates `cur_f` and `ref_f` views (segment columns + f_<feature>)."""

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
        segs = "".join(e + ", " for e in segment_exprs)
        feats = "".join(f"r.features.{ident(n)} AS {ident('f_' + n)}, " for n in info.numeric + info.categorical)
        # rate samples only: per-segment quotas oversample rare segments on purpose, which would
        # show up as drift of e.g. the hour of day in every segment that mixes them
        base = f"""SELECT {segs}{feats}r.event_time, r.part, r."offset" FROM requests r
                   WHERE r.sampled_reason = 'rate'"""
        self.has_reference = reference is not None
        side = "'cur'"
        if reference is None:
            con.execute(f"CREATE OR REPLACE TEMP VIEW cur_f AS {base}")
            con.execute(f"CREATE OR REPLACE TEMP VIEW ref_f AS {base} LIMIT 0")
        elif reference.file is not None:
            ref = load_reference_file(reference.file, info).with_row_index("row_in_file")
            con.register("ref_file_frame", ref.to_arrow())
            con.execute(f"CREATE OR REPLACE TEMP VIEW cur_f AS {base}")
            # the row's place in the file stands in for its coordinates (the sample's hash)
            con.execute(
                """CREATE OR REPLACE TEMP VIEW ref_f AS
                   SELECT * EXCLUDE (row_in_file), 0 AS part, row_in_file::BIGINT AS "offset" FROM ref_file_frame"""
            )
        else:
            win = f"r.event_time >= TIMESTAMPTZ '{reference.start}' AND r.event_time < TIMESTAMPTZ '{reference.end}'"
            con.execute(f"CREATE OR REPLACE TEMP VIEW ref_f AS {base} AND {win}")
            con.execute(f"CREATE OR REPLACE TEMP VIEW cur_f AS {base} AND NOT ({win})")
            side = f"CASE WHEN {win} THEN 'ref' ELSE 'cur' END"

        def rows_of(relation: str) -> str:
            """The rows of stored requests `relation` that the statistics read, with their side."""
            return f"""(SELECT {side} AS side, {segs}{feats}r.part, r."offset", 1::TINYINT AS sign
                        FROM {relation} r WHERE r.sampled_reason = 'rate')"""

        # both sides in one pass over the stored requests, where the views would read them twice;
        # a reference file's rows are not stored requests
        self._rows = _BOTH_SIDES if reference is not None and reference.file is not None else rows_of("requests")
        # kept between looks when every row comes from the stored requests
        self._kept: tuple[int, str, Callable[[str], str]] | None = None
        gen = cache_generation(con)
        if gen is not None and (reference is None or reference.file is None):
            self._kept = (gen, repr((segment_exprs, reference)), rows_of)

    @classmethod
    def from_views(cls, con: duckdb.DuckDBPyConnection, info: RunInfo, sets: SegmentSets) -> FeatureTables:
        """Over `cur_f` and `ref_f` views the caller made (e.g. two frames outside any run), with
        `part` and `offset` columns that tell rows apart."""
        self = cls.__new__(cls)
        self.con, self.info, self.sets, self.has_reference = con, info, sets, True
        self._rows = _BOTH_SIDES
        self._kept = None
        return self

    def _moments(self, table: str) -> dict[str, dict[str, dict[str, Any]]]:
        """Per side and segment: n_all, and per numeric feature n_, mean_, sd_, min_, max_."""
        out: dict[str, dict[str, dict[str, Any]]] = {side: {} for side in SIDES}
        for r in _rows(self.con, f"SELECT * FROM {table}"):
            m: dict[str, Any] = {"n_all": int(r["n_all"])}
            for n in self.info.numeric:
                k = int(r["n_" + n])
                mean = r["s_" + n] / k if k else None
                var = max(r["q_" + n] / k - mean * mean, 0.0) if mean is not None else None
                m |= {"n_" + n: k, "mean_" + n: mean, "sd_" + n: None if var is None else math.sqrt(var)}
                m |= {"min_" + n: r["lo_" + n], "max_" + n: r["hi_" + n]}
            out[str(r["side"])][str(r["segment"])] = m
        return out

    def _raw(self, table: str, feature: str, seg: str, side: str) -> list[float]:
        """Raw values of one feature in one segment (for the small-sample tests)."""
        c = ident("f_" + feature)
        sql = f"SELECT {c} FROM {table} WHERE {self.sets.where(seg)} AND {c} IS NOT NULL AND {side}"
        return sorted(float(v) for (v,) in self.con.execute(sql).fetchall())

    def _histograms(self, sample: str, feature: str, lo: float, width: float) -> dict[str, dict[str, np.ndarray]]:
        """Per side, then segment: the feature's histogram, both sides in one pass over the sample."""
        c = ident("f_" + feature)
        b = f"least(greatest(floor(({c} - {lo!r}) / {width!r}), 0), {BINS - 1})::INT"
        sql = f"""SELECT {self.sets.name_sql()} || '|' || side AS name, bin, k FROM (
                    SELECT {self.sets.select()}, side, {b} AS bin, count(*) AS k FROM {sample}
                    WHERE {c} IS NOT NULL {self.sets.group_by(["side", b])})"""
        sides: dict[str, dict[str, np.ndarray]] = {side: {} for side in SIDES}
        for key, counts in histograms(self.con, self.sets, sql, BINS, named=True).items():
            segment, _, side = key.rpartition("|")  # a side's name has no '|'
            sides[side][segment] = counts
        return sides

    def _distinct(self, sample: str) -> dict[str, dict[str, int]]:
        """Per segment, about how many values each numeric feature takes in the reference's
        sample (a feature with few is compared as categories)."""
        if not self.info.numeric:
            return {}
        cols = ", ".join(f"approx_count_distinct({ident('f_' + n)}) AS {ident('u_' + n)}" for n in self.info.numeric)
        rows = _rows(self.con, f"SELECT {self.sets.select()}, {cols} FROM {sample} WHERE side = 'ref' {self.sets.group_by()}")
        return {self.sets.name(r): {n: int(r["u_" + n]) for n in self.info.numeric} for r in rows}

    def collect(self, max_rows: int = 1_000_000) -> list[FeatureStats]:
        """Distribution grids and distinct counts on a hash sample of each side of at most about
        `max_rows` rows (a million rows pin a distance to ~0.001); counts of nulls, ranges and
        categories on every row."""
        parts = FeatureParts(self.con, self.sets, self.info.numeric, self.info.categorical, max_rows)
        tables = parts.whole(self._rows) if self._kept is None else parts.kept(*self._kept)
        moments = self._moments(tables.moments)
        cur_side, ref_side = moments["cur"], (moments["ref"] if self.has_reference else {})
        grids = self._grids(tables, ref_side.get(ALL), cur_side.get(ALL))
        oor = parts.out_of_range(grids.ranges, self._rows, self._kept)
        distinct = self._distinct(tables.sample) if grids.hists else {}
        cats: dict[tuple[str, str, str], dict[str | None, int]] = {}
        for seg, side, feature, v, k in self.con.execute(f"SELECT segment, side, feature, v, k FROM {tables.cats}").fetchall():
            cats.setdefault((f"{side}_f", feature, seg), {})[v] = int(k)
        results: list[FeatureStats] = []
        for seg, cur in cur_side.items():
            ref = ref_side.get(seg)
            for n in self.info.numeric:
                drift = self._numeric_drift(tables, grids, seg, n, cur, ref, distinct.get(seg, {}).get(n))
                n_cur, n_ref = int(cur["n_" + n]), int(ref["n_" + n]) if ref else 0
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
            for n in self.info.categorical:
                results.append(
                    _categorical_stats(seg, n, cur, ref, cats.get(("cur_f", n, seg), {}), cats.get(("ref_f", n, seg), {}))
                )
        return results

    def _grids(self, tables: PartTables, ref_all: dict[str, Any] | None, cur_all: dict[str, Any] | None) -> _Grids:
        """Per numeric feature present on both sides: histograms of each side over one grid of
        the whole run's range, and the reference's range."""
        grids = _Grids({}, {})
        for n in self.info.numeric:
            if not ref_all or not cur_all or not ref_all["n_" + n] or not cur_all["n_" + n]:
                continue
            lo, hi = _bin_range(ref_all, cur_all, n)
            width = (hi - lo) / BINS
            sides = self._histograms(tables.sample, n, lo, width)
            grids.hists[n] = (width, sides["ref"], sides["cur"])
            grids.ranges[n] = (float(ref_all["min_" + n]), float(ref_all["max_" + n]))
        return grids

    def _numeric_drift(
        self,
        tables: PartTables,
        grids: _Grids,
        seg: str,
        n: str,
        cur: dict[str, Any],
        ref: dict[str, Any] | None,
        distinct: int | None,
    ) -> DriftResult | None:
        """A numeric feature's drift in a segment: as categories when it takes at most 5 values,
        else from the histograms (and the raw values of a small reference)."""
        n_cur, n_ref = int(cur["n_" + n]), int(ref["n_" + n]) if ref else 0
        if not (ref and n_ref and n_cur and n in grids.hists):
            return None
        width, rh, ch = grids.hists[n]
        if distinct is not None and distinct <= 5:
            return categorical_drift(
                cats_from(self.con, tables.sample, n, self.sets, seg, "ref"),
                cats_from(self.con, tables.sample, n, self.sets, seg, "cur"),
            )
        if seg not in rh or seg not in ch:
            return None
        raw_ref = raw_cur = None
        if n_ref <= SMALL:
            raw_ref = self._raw("ref_f", n, seg, "TRUE")
            raw_cur = self._raw(tables.sample, n, seg, "side = 'cur'")
        return numeric_drift_hist(width, rh[seg], ch[seg], float(ref["sd_" + n] or 0), raw_ref, raw_cur)


@dataclass
class _Grids:
    hists: dict[str, tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]]  # feature -> (bin width, ref, cur)
    ranges: dict[str, tuple[float, float]]  # feature -> the reference's min and max


def _categorical_stats(
    seg: str,
    n: str,
    cur: dict[str, Any],
    ref: dict[str, Any] | None,
    cc_all: dict[str | None, int],
    rc_all: dict[str | None, int],
) -> FeatureStats:
    """A categorical feature in a segment: nulls, categories the reference never had, drift."""
    nulls_c, nulls_r = cc_all.get(None, 0), rc_all.get(None, 0)
    cc = {k: v for k, v in cc_all.items() if k is not None}
    rc = {k: v for k, v in rc_all.items() if k is not None}
    new_vals = sorted(v for v in cc if v not in rc) if ref else []
    drift = categorical_drift(rc, cc) if ref and rc and cc else None
    return FeatureStats(
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


def cats_from(con: duckdb.DuckDBPyConnection, table: str, feature: str, sets: SegmentSets, seg: str, side: str) -> dict[str, int]:
    c = ident("f_" + feature)
    rows = con.execute(
        f"""SELECT CAST({c} AS VARCHAR), count(*) FROM {table}
            WHERE side = '{side}' AND {sets.where(seg)} AND {c} IS NOT NULL GROUP BY 1"""
    ).fetchall()
    return {str(v): int(k) for v, k in rows}
