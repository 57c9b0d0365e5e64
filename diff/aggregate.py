"""Per-segment aggregates of the `pairs` relation, computed by DuckDB in a few grouped scans
(parallel, out-of-core), returned as plain dicts for the checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np

from diff.segments import SegmentSets


def latency_grid(quantiles: Sequence[float]) -> list[float]:
    """Quantile fractions around each asked quantile, to read order-statistic CIs from."""
    offs = [0, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08]
    grid = {round(min(0.9995, max(0.0005, p + s * o)), 6) for p in quantiles for o in offs for s in (-1, 1)}
    return sorted(grid)


def interp(grid: Sequence[float], values: Sequence[float] | None, f: float) -> float:
    if not values:
        return float("nan")
    return float(np.interp(f, grid, values))


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def pair_stats(
    con: duckdb.DuckDBPyConnection,
    sets: SegmentSets,
    tolerance: float,
    lat_grid: Sequence[float],
    where: str = "TRUE",
    abs_grid: Sequence[float] = (),
    abs_thresholds: Sequence[float] = (),
) -> dict[str, dict[str, Any]]:
    """Counts, label flips, score differences, latency quantiles and errors per segment;
    quantiles of |Δscore| over `abs_grid`, and `far_abs_<i>`: pairs with |Δscore| above
    `abs_thresholds[i]`."""
    g = "[" + ", ".join(str(x) for x in lat_grid) + "]"
    abs_cols = "".join(
        f"count(*) FILTER (WHERE abs(c_score - b_score) > {float(t)!r}) AS far_abs_{i}," for i, t in enumerate(abs_thresholds)
    )
    if abs_grid:
        abs_cols += "quantile_cont(abs(c_score - b_score), [" + ", ".join(str(x) for x in abs_grid) + "]) AS abs_d_grid,"
    d = "(c_score - b_score)"
    both = "b_err IS NULL AND c_err IS NULL"
    sql = f"""
    SELECT {sets.select()},
      count(*) AS n_req,
      count(*) FILTER (WHERE {both}) AS n_pair,
      count(*) FILTER (WHERE c_err IS NOT NULL AND c_err <> 'throttled') AS c_err_n,
      count(*) FILTER (WHERE c_err = 'throttled') AS c_throttled_n,
      count(*) FILTER (WHERE c_err = 'timeout') AS c_timeout_n,
      count(*) FILTER (WHERE b_err IS NOT NULL) AS b_err_n,
      count(*) FILTER (WHERE b_label IS NOT NULL AND c_label IS NOT NULL) AS n_lab,
      count(*) FILTER (WHERE b_label IS NOT NULL AND c_label IS NOT NULL AND b_label <> c_label) AS flips,
      count(*) FILTER (WHERE b_label IS NOT NULL AND r_label IS NOT NULL) AS n_lab_r,
      count(*) FILTER (WHERE b_label IS NOT NULL AND r_label IS NOT NULL AND b_label <> r_label) AS flips_r,
      count({d}) AS n_s,
      sum({d}) AS sum_d, sum({d} * {d}) AS sum_d2, sum(abs({d})) AS sum_abs_d, {abs_cols}
      count(*) FILTER (WHERE abs({d}) > {tolerance}) AS far,
      count(r_score - b_score) AS n_s_r,
      count(*) FILTER (WHERE abs(r_score - b_score) > {tolerance}) AS far_r,
      sum(r_score - b_score) AS sum_dr, sum((r_score - b_score) * (r_score - b_score)) AS sum_dr2,
      corr(c_score, b_score) AS corr,
      avg(abs({d}) / nullif(abs(b_score), 0)) AS mean_rel_d,
      quantile_cont(abs({d}), [0.5, 0.9, 0.99]) AS abs_d_q,
      count(b_lat) FILTER (WHERE b_err IS NULL) AS n_bl,
      count(c_lat) FILTER (WHERE c_err IS NULL) AS n_cl,
      quantile_cont(b_lat, {g}) FILTER (WHERE b_err IS NULL) AS b_lat_q,
      quantile_cont(c_lat, {g}) FILTER (WHERE c_err IS NULL) AS c_lat_q,
      min(event_time) AS t_min, max(event_time) AS t_max
    FROM pairs WHERE {where} {sets.group_by()}"""
    return {sets.name(r): r for r in _rows(con, sql)}


def histograms(con: duckdb.DuckDBPyConnection, sets: SegmentSets, sql: str, bins: int) -> dict[str, np.ndarray]:
    """Per segment, the counts of a `select(), bin, k` query as an array of `bins`: fetched as
    columns (segments x bins rows would cost seconds as Python rows)."""
    cols = con.execute(f"SELECT {sets.name_sql()} AS segment, bin, k FROM ({sql})").fetchnumpy()
    if not len(cols["segment"]):
        return {}
    names, at = np.unique(cols["segment"].astype(str), return_inverse=True)
    counts = np.zeros((len(names), bins))
    counts[at, cols["bin"].astype(np.int64)] = cols["k"]
    return {str(name): counts[i] for i, name in enumerate(names)}


SCORE_BINS = 1000


def score_distributions(con: duckdb.DuckDBPyConnection, sets: SegmentSets, where: str = "TRUE") -> dict[str, dict[str, Any]]:
    """Histograms of baseline and candidate scores per segment over shared bins (prediction
    drift); bin edges rounded so re-judging bins every value the same way."""
    ok = f"b_err IS NULL AND c_err IS NULL AND b_score IS NOT NULL AND c_score IS NOT NULL AND {where}"
    r = con.execute(f"SELECT min(least(b_score, c_score)), max(greatest(b_score, c_score)) FROM pairs WHERE {ok}").fetchone()
    if not r or r[0] is None:
        return {}
    lo, hi = float(f"{r[0]:.6g}"), float(f"{r[1]:.6g}")
    hi = hi * (1 + 1e-9) + 1e-12 if hi > lo else lo + 1.0
    width = (hi - lo) / SCORE_BINS
    out: dict[str, dict[str, Any]] = {}
    for side, col in (("b", "b_score"), ("c", "c_score")):
        b = f"least(greatest(floor(({col} - {lo!r}) / {width!r}), 0), {SCORE_BINS - 1})::INT"
        sql = f"SELECT {sets.select()}, {b} AS bin, count(*) AS k FROM pairs WHERE {ok} {sets.group_by([b])}"
        for name, counts in histograms(con, sets, sql, SCORE_BINS).items():
            out.setdefault(name, {"width": width, "b": np.zeros(SCORE_BINS), "c": np.zeros(SCORE_BINS)})[side] = counts
    sds = _rows(con, f"SELECT {sets.select()}, stddev_pop(b_score) AS sd FROM pairs WHERE {ok} {sets.group_by()}")
    for row in sds:
        if sets.name(row) in out:
            out[sets.name(row)]["sd_b"] = row["sd"]
    return out


def label_counts(con: duckdb.DuckDBPyConnection, sets: SegmentSets, where: str = "TRUE") -> dict[str, dict[str, Any]]:
    """Label distributions and flip directions per segment."""
    out: dict[str, dict[str, Any]] = {}
    sql = f"""SELECT {sets.select()}, b_label, c_label, count(*) AS n FROM pairs
        WHERE b_label IS NOT NULL AND c_label IS NOT NULL AND {where}
        {sets.group_by(["b_label", "c_label"])}"""
    for r in _rows(con, sql):
        seg = out.setdefault(sets.name(r), {"b": {}, "c": {}, "moves": {}})
        seg["b"][r["b_label"]] = seg["b"].get(r["b_label"], 0) + r["n"]
        seg["c"][r["c_label"]] = seg["c"].get(r["c_label"], 0) + r["n"]
        if r["b_label"] != r["c_label"]:
            seg["moves"][f"{r['b_label']}→{r['c_label']}"] = r["n"]
    return out


def per_window(
    con: duckdb.DuckDBPyConnection, sets: SegmentSets, quantiles: Sequence[float], width_minutes: float, where: str = "TRUE"
) -> dict[str, list[dict[str, Any]]]:
    """Tumbling event-time windows of `width_minutes` per segment, for sustained checks."""
    qs = "[" + ", ".join(str(q) for q in sorted(set(quantiles))) + "]"
    width_s = max(1, round(width_minutes * 60))
    sql = f"""SELECT {sets.select()}, time_bucket(INTERVAL '{width_s} seconds', event_time) AS window_start,
        count(*) AS n, count(*) FILTER (WHERE c_err IS DISTINCT FROM 'throttled') AS n_called,
        count(*) FILTER (WHERE c_err IS NOT NULL AND c_err <> 'throttled') AS c_err_n,
        count(*) FILTER (WHERE b_err IS NOT NULL) AS b_err_n,
        quantile_cont(b_lat, {qs}) FILTER (WHERE b_err IS NULL) AS b_q,
        quantile_cont(c_lat, {qs}) FILTER (WHERE c_err IS NULL) AS c_q
        FROM pairs WHERE {where} {sets.group_by(["window_start"])}"""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in _rows(con, sql):
        out.setdefault(sets.name(r), []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r["window_start"])
    return out


def version_pairs(con: duckdb.DuckDBPyConnection, sets: SegmentSets, expected: str) -> dict[str, dict[str, Any]]:
    """Requests whose feature pipeline version differs from what the candidate was built for."""
    sql = f"""SELECT {sets.select()}, count(*) AS n,
        count(*) FILTER (WHERE feature_version IS NOT NULL AND feature_version <> $v) AS mismatched,
        list(DISTINCT feature_version) FILTER (WHERE feature_version IS NOT NULL AND feature_version <> $v) AS seen
        FROM pairs {sets.group_by()}"""
    cur = con.execute(sql, {"v": expected})
    cols = [d[0] for d in cur.description]
    return {sets.name(dict(zip(cols, r, strict=True))): dict(zip(cols, r, strict=True)) for r in cur.fetchall()}


LATENCY_BLOCKS = 50


def latency_blocks(
    con: duckdb.DuckDBPyConnection,
    sets: SegmentSets,
    quantiles: Sequence[float],
    where: str = "TRUE",
    blocks: int = LATENCY_BLOCKS,
) -> dict[str, list[dict[str, Any]]]:
    """Latency quantiles per segment in `blocks` consecutive stretches of the run, each with
    the same number of pairs, in the order the shadow made the calls: by the wall-clock time a
    batch's calls were sent (`called_at`; for answers recorded in production, their event time),
    then by event time within a batch. Latencies measured close together share the machine's
    load and a batched call's duration, so they are not independent; the spread of the blocks'
    values gives an honest standard error (batch means). Event time alone would not do for a
    replay: partitions read side by side put distant event times next to each other on the
    clock."""
    ok = f"b_err IS NULL AND c_err IS NULL AND b_lat IS NOT NULL AND c_lat IS NOT NULL AND {where}"
    qs = "[" + ", ".join(str(q) for q in sorted(set(quantiles))) + "]"
    order = 'coalesce(called_at, event_time), event_time, source, part, "offset"'
    sql = f"""SELECT {sets.select()}, blk, count(*) AS n,
        quantile_cont(b_lat, {qs}) AS b_q, quantile_cont(c_lat, {qs}) AS c_q
        FROM (SELECT *, ntile({blocks}) OVER (ORDER BY {order}) - 1 AS blk FROM pairs WHERE {ok})
        {sets.group_by(["blk"])}"""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in _rows(con, sql):
        out.setdefault(sets.name(r), []).append(r)
    for rows in out.values():
        rows.sort(key=lambda r: r["blk"])  # in time order: the blocks' correlation is read from neighbours
    return out
