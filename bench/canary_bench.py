"""Canary decisions as a rollout sees them (issue: canary analysis): the FIRST terminal verdict of
each simulated canary, judged every 1,000 canary records, with the served judge's own tests
(diff/served.py): the canary's error rate against the stable's (`error_excess`: an excess over it,
each side's standard error at the boundary) and the P95 / P99 latency ratio per block of
wall-clock time holding BLOCK_MIN canary records (diff/checks.latency's batch means), decided by
diff/decide.py. The checks are fed the aggregates directly (no DuckDB per look) so that thousands
of runs fit in minutes; tests/test_served.py runs the same decisions through the whole path.

    python bench/canary_bench.py [--runs 200] [--max-looks 240] [--canaries 'at the margin']

Traffic: 100 requests a second split by the canary weight (5 %, 20 %, 50 %); each version's
latency is lognormal (median 50 ms, log sd 0.4) times its own server's bursts of load (AR(1) on
3-second slices, sd 0.085, phi 0.6: bench/burst_noise.py's measurement), the stable's error
rate 1 %. A latency block is a run of slices holding at least 200 canary records. Policy: alpha
0.01, error rate at most +1 point over the stable's, P95 and P99 ratios at most x1.3, latency
decided once its calls span 10 minutes.

Canaries: sound; P95 +40 % (every latency x1.4); error rate +3 points; latency variance doubled
with the same median (log sd x sqrt 2); a mostly-zero error rate (0.05 %) that rises to 2 %.
At the margins (every latency x1.3, the error rate +1 point): a first terminal GO is a wrong GO.
Targets: a bad canary's first terminal verdict NO_GO in >= 95 % of runs; a sound one NO_GO in
<= 1 % and GO in >= 90 %; at the margins GO in <= alpha (1 %); the median records and minutes
of traffic needed.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decision_bench import ar1_load
from measure import share

from shadowdiff.diff import aggregate as agg
from shadowdiff.diff import checks as ck
from shadowdiff.diff import served_evidence
from shadowdiff.diff.decide import Family, decide
from shadowdiff.diff.segments import ALL
from shadowdiff.diff.served import error_excess
from shadowdiff.schemas.policy import parse_policy

RATE_PER_S = 100.0
SLICE_S = 3.0
LOOK = 1_000  # canary records between looks
BLOCK_MIN = served_evidence.BLOCK_MIN  # canary records a latency block holds at least
MEDIAN_MS, LOG_SD = 50.0, 0.4
BURSTS = (0.085, 0.6)
STABLE_ERRORS = 0.01
LAT_QS = [0.5, 0.95, 0.99]
LAT_GRID = agg.latency_grid(LAT_QS)
T0 = datetime(2026, 12, 1, tzinfo=UTC)

POLICY = parse_policy(
    {
        "inherit_defaults": False,
        "checks": [
            {"id": "error_rate", "kind": "error_rate", "threshold": 0.01},
            {"id": "latency_p95", "kind": "latency", "quantile": 0.95, "threshold": 1.3},
            {"id": "latency_p99", "kind": "latency", "quantile": 0.99, "threshold": 1.3},
        ],
    }
)
CHECKS = POLICY.checks
FAMILY = Family(checks=frozenset(c.id for c in CHECKS))

# name: (latency factor, log sd factor, stable error rate, canary error rate)
CANARIES: dict[str, tuple[float, float, float, float]] = {
    "sound": (1.0, 1.0, STABLE_ERRORS, STABLE_ERRORS),
    "P95 +40 %": (1.4, 1.0, STABLE_ERRORS, STABLE_ERRORS),
    "error rate +3 points": (1.0, 1.0, STABLE_ERRORS, STABLE_ERRORS + 0.03),
    "latency variance doubled, same median": (1.0, math.sqrt(2), STABLE_ERRORS, STABLE_ERRORS),
    "mostly-zero errors rising to 2 %": (1.0, 1.0, 0.0005, 0.02),
    # exactly at the policy's margins: a first terminal GO here is a wrong GO, at most alpha
    "at the margin: every latency x1.3": (1.3, 1.0, STABLE_ERRORS, STABLE_ERRORS),
    "at the margin: error rate +1 point": (1.0, 1.0, STABLE_ERRORS, STABLE_ERRORS + 0.01),
}


class Side:
    """One version's records so far: latencies per slice, errors."""

    def __init__(self) -> None:
        self.lat: list[np.ndarray] = []
        self.n = 0
        self.errors = 0

    def add(self, rng: np.random.Generator, m: int, factor: float, log_sd: float, load: float, err: float) -> None:
        self.lat.append(MEDIAN_MS * factor * np.exp(load + rng.normal(0, LOG_SD * log_sd, m)))
        self.n += m
        self.errors += int(rng.binomial(m, err))


def latency_inputs(stable: Side, canary: Side) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The pooled quantiles and the time blocks (runs of slices with >= BLOCK_MIN canary
    records) ck.latency reads."""
    s_all, c_all = np.concatenate(stable.lat), np.concatenate(canary.lat)
    s = {
        "n_bl": stable.n,
        "n_cl": canary.n,
        "n_pair": canary.n,
        "b_lat_q": list(np.quantile(s_all, LAT_GRID)),
        "c_lat_q": list(np.quantile(c_all, LAT_GRID)),
    }
    blocks: list[dict[str, Any]] = []
    start, acc_c = 0, 0
    for i, lat in enumerate(canary.lat):
        acc_c += len(lat)
        if acc_c >= BLOCK_MIN:
            c = np.concatenate(canary.lat[start : i + 1])
            b = np.concatenate(stable.lat[start : i + 1])
            # as diff/served_evidence.py: each side's quantile from as many records as the
            # other's (a sample quantile's bias shrinks with its size); records of a slice are
            # independent given its load, so the first m are a random m
            m = min(len(b), len(c))
            b, c = b[:m], c[:m]
            first = T0 + timedelta(seconds=start * SLICE_S)
            blocks.append(
                {
                    "n": len(c),
                    "calls": len(c),
                    "first_call": {"k0": first},
                    "b_q": list(np.quantile(b, LAT_QS)),
                    "c_q": list(np.quantile(c, LAT_QS)),
                }
            )
            start, acc_c = i + 1, 0
    return s, blocks


def results(stable: Side, canary: Side) -> list[ck.CheckResult]:
    out: list[ck.CheckResult] = []
    sides = served_evidence.SideStats(stable.n, stable.errors), served_evidence.SideStats(canary.n, canary.errors)
    out.append(error_excess(CHECKS[0], served_evidence.SegmentEvidence(ALL, None, None, *sides)))
    s, blocks = latency_inputs(stable, canary)
    for chk in CHECKS[1:]:
        lr = ck.latency(chk, "all", s, chk.threshold, chk.severity, LAT_GRID, None, blocks, LAT_QS.index(chk.quantile))
        if lr is not None:
            out.append(lr)
    return out


def run_once(args: tuple[str, float, int, int]) -> dict[str, Any]:
    name, weight, seed, max_looks = args
    factor, log_sd, e_s, e_c = CANARIES[name]
    rng = np.random.default_rng(seed)
    per_slice = RATE_PER_S * SLICE_S
    slices = int(max_looks * LOOK / (per_slice * weight)) + 2
    load_s, load_c = ar1_load(rng, slices, *BURSTS), ar1_load(rng, slices, *BURSTS)
    stable, canary = Side(), Side()
    next_look = LOOK
    for t in range(slices):
        n_c = int(rng.poisson(per_slice * weight))
        n_s = int(rng.poisson(per_slice * (1 - weight)))
        stable.add(rng, n_s, 1.0, 1.0, load_s[t], e_s)
        canary.add(rng, n_c, factor, log_sd, load_c[t], e_c)
        if canary.n < next_look:
            continue
        next_look += LOOK
        res = results(stable, canary)
        decide(res, POLICY, canary.n, FAMILY)
        minutes = (t + 1) * SLICE_S / 60
        if any(r.status == ck.FAIL for r in res):
            return {
                "verdict": "no_go",
                "records": canary.n,
                "minutes": minutes,
                "failed": sorted({r.check_id for r in res if r.status == ck.FAIL}),
            }
        if len(res) == len(CHECKS) and all(r.status == ck.PASS for r in res):
            return {"verdict": "go", "records": canary.n, "minutes": minutes, "failed": []}
    return {"verdict": "pending", "records": canary.n, "minutes": slices * SLICE_S / 60, "failed": []}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--max-looks", type=int, default=240)
    ap.add_argument("--weights", default="0.05,0.2,0.5")
    ap.add_argument("--canaries", default="", help="comma-separated names' starts (default: all), e.g. 'at the margin'")
    a = ap.parse_args()
    weights = [float(w) for w in a.weights.split(",")]
    with multiprocessing.Pool() as pool:
        chosen = [n for n in CANARIES if not a.canaries or any(n.startswith(c) for c in a.canaries.split(","))]
        for name in chosen:
            for w in weights:
                out = pool.map(run_once, [(name, w, seed, a.max_looks) for seed in range(a.runs)])
                go = [r for r in out if r["verdict"] == "go"]
                no_go = [r for r in out if r["verdict"] == "no_go"]
                decided = [r for r in out if r["verdict"] != "pending"]
                med = (
                    f"median {statistics.median(r['records'] for r in decided):,.0f} canary records, "
                    f"{statistics.median(r['minutes'] for r in decided):.0f} min"
                    if decided
                    else "none decided"
                )
                failed = sorted({c for r in no_go for c in r["failed"]})
                print(
                    f"{name:40s} weight {w:4.0%}: first terminal GO {share(len(go), a.runs)}, NO_GO {share(len(no_go), a.runs)} "
                    f"({', '.join(failed) or '-'}); {med}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
