"""Aggregates of the pairs that are signed sums per segment (counts, compensated totals): kept
in a judge's cache, a look adds its delta of the kept pairs to them instead of reading every
pair. Label counts, score distributions and the pair set's digest are read this way; the same
classes build them whole over `pairs` outside a cache, so a look and a full re-judge agree."""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np

from shadowdiff.diff.aggregate import _rows, histograms
from shadowdiff.diff.kept import RATE, KeptPairs, PairAggregate, SignedSums, maintained, rate_pairs
from shadowdiff.diff.kept import signed_count as count
from shadowdiff.diff.kept import signed_total as total
from shadowdiff.diff.segments import SegmentSets


def label_counts(
    con: duckdb.DuckDBPyConnection, sets: SegmentSets, where: str = "TRUE", kept: KeptPairs | None = None
) -> dict[str, dict[str, Any]]:
    """Label distributions and flip directions per segment."""
    labels = SignedSums(
        con,
        sets,
        "label_counts",
        {"n": count()},
        lambda source: f"(SELECT * FROM {source} WHERE b_label IS NOT NULL AND c_label IS NOT NULL)",
        ["b_label", "c_label"],
    )
    out: dict[str, dict[str, Any]] = {}
    for r in _rows(con, f"SELECT * FROM ({labels.over_pairs(where, kept)}) ORDER BY ALL"):
        seg = out.setdefault(r["segment"], {"b": {}, "c": {}, "moves": {}})
        seg["b"][r["b_label"]] = seg["b"].get(r["b_label"], 0) + r["n"]
        seg["c"][r["c_label"]] = seg["c"].get(r["c_label"], 0) + r["n"]
        if r["b_label"] != r["c_label"]:
            seg["moves"][f"{r['b_label']}→{r['c_label']}"] = r["n"]
    return out


SCORE_BINS = 1000
_SCORED = "b_err IS NULL AND c_err IS NULL AND b_score IS NOT NULL AND c_score IS NOT NULL"


class _ScoreRange(PairAggregate):
    """The least and greatest score of the scored pairs, and how many pairs hold each. A delta
    that takes back every pair at an end builds it again from the kept pairs (rare: a look
    takes back only pairs whose request id new rows touched, and builds most of them again)."""

    name = "score_range"
    spec = "v2"

    def __init__(self, con: duckdb.DuckDBPyConnection, kept_table: str) -> None:
        self.con, self.kept_table = con, kept_table

    def sql(self, source: str) -> str:
        return f"""WITH s AS (SELECT least(b_score, c_score) AS l, greatest(b_score, c_score) AS g
                             FROM {source} WHERE sign > 0 AND {_SCORED}),
                   e AS (SELECT min(l) AS lo, max(g) AS hi FROM s)
                   SELECT e.lo, count(*) FILTER (WHERE s.l = e.lo) AS n_lo, e.hi, count(*) FILTER (WHERE s.g = e.hi) AS n_hi
                   FROM s, e GROUP BY e.lo, e.hi"""

    def build(self, table: str, source: str, kind: str = "") -> None:
        self.con.execute(f"CREATE OR REPLACE {kind} TABLE {table} AS {self.sql(source)}")

    def apply(self, table: str, delta: str) -> str | None:
        con = self.con
        old = con.execute(f"SELECT lo, n_lo, hi, n_hi FROM {table}").fetchone()
        if old is None:  # no scored pair kept: none can be taken back
            self.build(table, delta)
            return None
        lo, n_lo, hi, n_hi = old
        # the delta's own ends, and its signed count of pairs at the kept ends (no pair kept lies
        # beyond them, so none the delta takes back does)
        d_lo, d_hi, at_lo, at_hi = con.execute(
            f"""SELECT min(least(b_score, c_score)) FILTER (WHERE sign > 0),
                       max(greatest(b_score, c_score)) FILTER (WHERE sign > 0),
                       coalesce(sum(sign) FILTER (WHERE least(b_score, c_score) = $lo), 0),
                       coalesce(sum(sign) FILTER (WHERE greatest(b_score, c_score) = $hi), 0)
                FROM {delta} WHERE {_SCORED}""",
            {"lo": lo, "hi": hi},
        ).fetchone() or (None, None, 0, 0)
        n_lo, n_hi = int(n_lo) + int(at_lo), int(n_hi) + int(at_hi)
        if d_lo is not None and d_lo < lo:
            lo, n_lo = d_lo, self._count_at(delta, "least", d_lo)
        if d_hi is not None and d_hi > hi:
            hi, n_hi = d_hi, self._count_at(delta, "greatest", d_hi)
        if n_lo <= 0 or n_hi <= 0:
            self.build(table, rate_pairs(self.kept_table))
            return "every pair at an end of the range was taken back"
        con.execute(
            f"CREATE OR REPLACE TABLE {table} AS SELECT $lo AS lo, $n_lo AS n_lo, $hi AS hi, $n_hi AS n_hi",
            {"lo": lo, "n_lo": n_lo, "hi": hi, "n_hi": n_hi},
        )
        return None

    def _count_at(self, delta: str, end: str, value: float) -> int:
        (n,) = self.con.execute(
            f"SELECT coalesce(sum(sign), 0) FROM {delta} WHERE {_SCORED} AND {end}(b_score, c_score) = $v", {"v": value}
        ).fetchone() or (0,)
        return int(n)


def _score_range(con: duckdb.DuckDBPyConnection, where: str, kept: KeptPairs | None) -> tuple[Any, Any]:
    def ends(source: str) -> str:
        return f"SELECT min(least(b_score, c_score)) AS lo, max(greatest(b_score, c_score)) AS hi FROM {source} WHERE {_SCORED}"

    if kept is None:
        return con.execute(ends(f"(SELECT * FROM pairs WHERE {where})")).fetchone() or (None, None)
    parts = [f"SELECT lo, hi FROM {maintained(con, kept, _ScoreRange(con, kept.table))}"]
    if where != RATE:
        parts.append(ends(f"(SELECT * FROM pairs WHERE NOT ({RATE}) AND {where})"))
    return con.execute(f"SELECT min(lo), max(hi) FROM ({' UNION ALL '.join(parts)})").fetchone() or (None, None)


def score_distributions(
    con: duckdb.DuckDBPyConnection, sets: SegmentSets, where: str = "TRUE", kept: KeptPairs | None = None
) -> dict[str, dict[str, Any]]:
    """Histograms of baseline and candidate scores per segment over shared bins (prediction
    drift); bin edges rounded so re-judging bins every value the same way. Kept histograms are
    built again when the bins move (a score beyond the range so far)."""
    r = _score_range(con, where, kept)
    if not r or r[0] is None:
        return {}
    lo, hi = float(f"{r[0]:.6g}"), float(f"{r[1]:.6g}")
    hi = hi * (1 + 1e-9) + 1e-12 if hi > lo else lo + 1.0
    width = (hi - lo) / SCORE_BINS

    def binned(col: str) -> str:
        return f"least(greatest(floor(({col} - {lo!r}) / {width!r}), 0), {SCORE_BINS - 1})::INT"

    def sides(source: str) -> str:
        segs = "".join(c + ", " for c in sets.columns)
        return f"""(SELECT sign, {segs}'b' AS side, {binned("b_score")} AS bin FROM {source} WHERE {_SCORED}
                    UNION ALL SELECT sign, {segs}'c' AS side, {binned("c_score")} AS bin FROM {source} WHERE {_SCORED})"""

    bins = SignedSums(con, sets, "score_bins", {"k": count()}, sides, ["side", "bin"], (lo, width))
    merged = bins.over_pairs(where, kept)
    out: dict[str, dict[str, Any]] = {}
    for side in ("b", "c"):
        sql = f"SELECT segment AS name, bin, k FROM ({merged}) WHERE side = '{side}'"
        for name, counts in histograms(con, sets, sql, SCORE_BINS, named=True).items():
            out.setdefault(name, {"width": width, "b": np.zeros(SCORE_BINS), "c": np.zeros(SCORE_BINS)})[side] = counts
    moments = SignedSums(
        con,
        sets,
        "score_moments",
        {"n": count(), "s": total("b_score"), "q": total("b_score * b_score")},
        lambda source: f"(SELECT * FROM {source} WHERE {_SCORED})",
    )
    for row in _rows(con, moments.over_pairs(where, kept)):
        if row["segment"] in out and row["n"]:
            mean = row["s"] / row["n"]
            out[row["segment"]]["sd_b"] = float(np.sqrt(max(row["q"] / row["n"] - mean * mean, 0.0)))
    return out


def pair_set(con: duckdb.DuckDBPyConnection, kept: KeptPairs | None) -> tuple[int, int, int, int]:
    """The pairs, the quota samples among them, and the sums of the pairs' digest parts (an
    order-free digest of which requests were judged, diff/explain.py)."""
    sums = SignedSums(
        con,
        SegmentSets([], []),
        "pair_set",
        {
            "n": count(),
            "quota": count("sampled_reason = 'quota'"),
            # HUGEINT: a sum of 64-bit halves (as sum() of UBIGINT gives), signed
            "hi": "coalesce(sum(sign * pair_hi::HUGEINT), 0)",
            "lo": "coalesce(sum(sign * pair_lo::HUGEINT), 0)",
        },
        lambda source: source,
    )
    row = con.execute(f"SELECT n, quota, hi, lo FROM ({sums.over_pairs('TRUE', kept)})").fetchone()
    return (0, 0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


__all__ = ["SCORE_BINS", "label_counts", "pair_set", "score_distributions"]
