"""The numbers behind the report's charts, aggregated in DuckDB (a 1M-pair run reduces to a
few kilobytes: histograms, a 1,500-point sample, per-bucket error rates)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from shadowdiff.diff.load import run_info
from shadowdiff.diff.pairs import Pooling, build_pairs


@dataclass
class ChartData:
    diff_edges: list[float] = field(default_factory=list)
    diff_hist: dict[str, list[float]] = field(default_factory=dict)
    scatter_x: list[float] = field(default_factory=list)
    scatter_y: list[float] = field(default_factory=list)
    latency_edges: list[float] = field(default_factory=list)
    latency_hist: dict[str, list[float]] = field(default_factory=dict)
    time_labels: list[str] = field(default_factory=list)
    error_series: dict[str, list[float | None]] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)


def _hist(con: duckdb.DuckDBPyConnection, expr: str, where: str, edges: np.ndarray) -> list[float]:
    lo, hi, nb = float(edges[0]), float(edges[-1]), len(edges) - 1
    width = (hi - lo) / nb or 1.0
    rows = con.execute(
        f"""SELECT least(greatest(floor(({expr} - {lo}) / {width}), 0), {nb - 1})::INT AS b, count(*)
            FROM pairs WHERE {where} AND {expr} IS NOT NULL GROUP BY 1"""
    ).fetchall()
    counts = np.zeros(nb)
    for b, c in rows:
        counts[int(b)] = c
    total = counts.sum() or 1.0
    return [float(x) for x in counts / total]


def collect(con: duckdb.DuckDBPyConnection, candidate: str, fields: list[str]) -> ChartData:
    info = run_info(con)
    build_pairs(con, info, candidate, fields, Pooling())
    cd = ChartData()
    ok = "b_err IS NULL AND c_err IS NULL"
    q = con.execute(f"SELECT quantile_cont(c_score - b_score, [0.005, 0.995]) FROM pairs WHERE {ok}").fetchone()
    if q and q[0] and q[0][0] is not None:
        lo, hi = q[0]
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, 41)
        cd.diff_edges = [float(e) for e in edges]
        cd.diff_hist["candidate"] = _hist(con, "c_score - b_score", ok, edges)
        (has_rep,) = con.execute("SELECT count(r_score) FROM pairs").fetchone() or (0,)
        if has_rep:
            cd.diff_hist["noise"] = _hist(con, "r_score - b_score", ok + " AND r_err IS NULL", edges)
        pts = con.execute(
            f"SELECT b_score, c_score FROM pairs WHERE {ok} AND b_score IS NOT NULL AND c_score IS NOT NULL "
            f'ORDER BY hash(part, "offset") LIMIT 1500'
        ).fetchall()
        cd.scatter_x = [float(p[0]) for p in pts]
        cd.scatter_y = [float(p[1]) for p in pts]
    q = con.execute(
        "SELECT quantile_cont(b_lat, 0.995), quantile_cont(c_lat, 0.995), min(least(b_lat, c_lat)) FROM pairs"
    ).fetchone()
    if q and q[0] is not None and q[1] is not None:
        hi = max(q[0], q[1])
        lo = max(q[2] or 0.01, 0.01)
        edges = np.linspace(math.log10(lo), math.log10(max(hi, lo * 1.01)), 31)
        cd.latency_edges = [float(10**e) for e in edges]
        cd.latency_hist = {
            "baseline": _hist(con, "log10(greatest(b_lat, 0.01))", "b_err IS NULL", edges),
            "candidate": _hist(con, "log10(greatest(c_lat, 0.01))", "c_err IS NULL", edges),
        }
    span = con.execute("SELECT epoch(max(event_time)) - epoch(min(event_time)) FROM pairs").fetchone()
    if span and span[0] is not None:
        bucket_min = max(1, math.ceil(span[0] / 60 / 200))
        rows = con.execute(
            f"""SELECT time_bucket(INTERVAL '{bucket_min} minutes', event_time) AS t, count(*),
                       avg((c_err IS NOT NULL)::INT), avg((b_err IS NOT NULL)::INT)
                FROM pairs GROUP BY 1 ORDER BY 1"""
        ).fetchall()
        cd.time_labels = [r[0].strftime("%m-%d %H:%M") for r in rows]
        cd.error_series = {"candidate": [float(r[2]) for r in rows], "baseline": [float(r[3]) for r in rows]}
    cd.dead_letters = [
        {"reason": r, "count": n, "example": d}
        for r, n, d in con.execute(
            "SELECT reason, count(*), any_value(detail) FROM dead_letters GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
    ]
    return cd
