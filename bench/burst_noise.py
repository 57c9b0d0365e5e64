"""How much of a real machine's latency noise belongs to one server only, measured on demo stores
(the noise bench's, under CPU burners): the figure that sets `--server-sigma` in
bench/decision_bench.py, whose reaching-GO rate depends on it.

    python bench/burst_noise.py STORE.duckdb [STORE.duckdb ...] [--candidate retrained]

A load both servers share cancels in the blocks' paired ratios, so what is measured is the
series of per-pair log latency ratios (candidate / baseline) in the order the calls were made
(as the judge's latency blocks follow it), cut in slices of 100 pairs, the slice the decision
bench simulates. Each slice's mean is the difference of the two servers' own load factors plus
the calls' own spread, which averages as 1/slice:

    Var(slice mean) = 2 sigma^2 + (within-slice variance) / 100

so sigma, each server's own log load factor's sd (the bench's `--server-sigma`), is read from
the slice means' variance less the calls' share; phi (per slice, the bench's 0.95) from the
slice means' lag-1 autocovariance over that same 2 sigma^2. Exact at one row a call (a call's
rows share one latency otherwise, and the within-slice term is then understated).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shadowdiff.diff.aggregate import CALL_ORDER

SLICE = 100  # pairs per slice, as bench/decision_bench.py simulates the load


def latency_pairs(store: Path, candidate: str) -> np.ndarray:
    """(baseline ms, candidate ms) per answered pair, in the judge's call order."""
    con = duckdb.connect(str(store), read_only=True)
    try:
        rows = con.execute(
            f"""
            SELECT b_lat, c_lat FROM (
                SELECT b.latency_ms AS b_lat, c.latency_ms AS c_lat, b.called_at, r.event_time, source, part, "offset"
                FROM outputs b
                JOIN outputs c USING (source, part, "offset")
                JOIN requests r USING (source, part, "offset")
                WHERE b.variant = 'baseline' AND c.variant = ?
                  AND b.error_class IS NULL AND c.error_class IS NULL
                  AND b.latency_ms > 0 AND c.latency_ms > 0
            )
            ORDER BY {", ".join(CALL_ORDER)}
            """,
            [f"candidate:{candidate}"],
        ).fetchall()
    finally:
        con.close()
    return np.array(rows, dtype=float).reshape(-1, 2)


def log_ratios(store: Path, candidate: str) -> np.ndarray:
    pairs = latency_pairs(store, candidate)
    return np.log(pairs[:, 1]) - np.log(pairs[:, 0])


def own_load(d: np.ndarray) -> tuple[float, float, int]:
    """(sigma, phi per slice, slices) of one run's series of log ratios."""
    k = len(d) // SLICE
    sl = d[: k * SLICE].reshape(k, SLICE)
    means = sl.mean(axis=1)
    within = float(sl.var(axis=1, ddof=1).mean())
    between = float(means.var(ddof=1)) - within / SLICE
    c = means - means.mean()
    lag1 = float((c[1:] * c[:-1]).sum() / (k - 1))
    sigma = math.sqrt(max(between, 0.0) / 2)
    phi = lag1 / between if between > 0 else float("nan")
    return sigma, phi, k


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stores", nargs="+", type=Path)
    ap.add_argument("--candidate", default="retrained")
    a = ap.parse_args()
    sigmas, phis = [], []
    for store in a.stores:
        d = log_ratios(store, a.candidate)
        if len(d) < 3 * SLICE:
            print(f"{store.name}: {len(d)} pairs, too few")
            continue
        sigma, phi, k = own_load(d)
        sigmas.append(sigma)
        phis.append(phi)
        print(
            f"{store.name}: {len(d)} pairs, {k} slices; ratio ×{math.exp(d.mean()):.3f}; "
            f"per-call log-ratio sd {d.std(ddof=1):.3f}; each server's own load: sd {sigma:.3f}, phi {phi:.2f}"
        )
    if sigmas:
        print(
            f"\n{len(sigmas)} runs: each server's own log load factor sd median {statistics.median(sigmas):.3f} "
            f"(range {min(sigmas):.3f}-{max(sigmas):.3f}); phi per {SLICE} pairs median {statistics.median(phis):.2f} "
            f"(bench/decision_bench.py simulates phi 0.95 and --server-sigma)"
        )


if __name__ == "__main__":
    main()
