"""The decision rule as a watched pipeline sees it: the FIRST terminal verdict (GO or NO_GO) of
each simulated run, judged at every look (every 1,000 pairs up to 100k, and a second schedule
every 100 pairs from 500). Simulates each segment's sufficient statistics, builds the check
results with diff/checks.py's own functions and decides with diff/decide.py over the declared
family, as the judge does (GO: nothing failing, no non-rare segment short of min_samples, every
critical check of `all` and of every segment shown within its threshold / segment margin).

    python bench/decision_bench.py [--runs 200] [--quick] [--looks 1000|100]

Prints, per experiment, shares of runs (with their binomial standard error):
- margin: per check kind, a value exactly at the threshold (rates at 1 % and 5 %, latency with
  each server's own AR(1) bursts at sd 0.085 / phi 0.6 and sd 0.15 / phi 0.95): first terminal
  verdict "shown within" and "NO_GO". Target: both <= alpha.
- power: +5 points of flips in a 3 % segment of 30: first terminal GO (target <= 1 %) and NO_GO
  naming the segment (target >= 95 %).
- go: a sound candidate, true values at half the margins, bursts as measured here: first
  terminal GO by 100k (target >= 90 %), NO_GO (target <= 1 %), median pairs.
- aa: A/A with bursts (sd 0.15, phi 0.95), heavy-tailed call latency, 3 candidates judged as one
  family: any false NO_GO (target <= 1 %).
Time: a slice of 100 pairs is 3 s of wall clock (about the 35 calls/s measured here).
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

from measure import share

from shadowdiff.diff import aggregate as agg
from shadowdiff.diff import checks as ck
from shadowdiff.diff.decide import Family, decide
from shadowdiff.schemas.policy import Check, Policy

MAX_PAIRS = 100_000
SLICE = 100  # pairs per slice of load
SLICE_S = 3.0  # wall-clock seconds per slice
NOISE_FLIP = 0.01
LAT_QS = [0.5, 0.95, 0.99]
LAT_GRID = agg.latency_grid(LAT_QS)
Z95 = 1.6448536269514722
LAT_SIGMA = 0.4  # spread of one call's log latency
ABS_GRID = agg.latency_grid([0.95])
T0 = datetime(2026, 1, 1, tzinfo=UTC)
MEASURED = (0.085, 0.6)  # each server's own burst load measured here (bench/burst_noise.py)
HARSH = (0.15, 0.95)


def schedule(every: int) -> list[int]:
    start = 500 if every < 1000 else every
    return list(range(start, MAX_PAIRS + 1, every))


def check(kind: str, **fields: Any) -> Check:
    return Check.model_validate({"id": kind, "kind": kind, **fields})


CHECKS = {c.id: c for c in Policy().checks}


class Segment:
    """Running sufficient statistics of one segment's pairs."""

    def __init__(self, noise_floor: bool = True) -> None:
        self.n = 0
        self.noise_floor = noise_floor
        self.flips = self.flips_r = self.far = self.far_r = self.errors = 0
        self.sum_d = self.sum_d2 = self.sum_abs = 0.0
        self.abs_far = 0
        self.slices: list[tuple[int, float, float]] = []  # (pairs, mean log ratio, start s)

    def add(
        self,
        rng: np.random.Generator,
        m: int,
        truth: dict[str, float],
        load: np.ndarray | None,
        t0_slice: float,
        heavy: bool = False,
    ) -> None:
        if m <= 0:
            return
        self.n += m
        self.flips += rng.binomial(m, truth.get("flip_rate", NOISE_FLIP + truth.get("flip_excess", 0.0)))
        self.flips_r += rng.binomial(m, NOISE_FLIP)
        self.far += rng.binomial(m, 0.002 + truth.get("far_excess", 0.0))
        self.far_r += rng.binomial(m, 0.002)
        self.errors += rng.binomial(m, truth.get("error_rate", 0.005))
        d = rng.normal(truth.get("shift", 0.0), truth.get("sd", 0.05), m)
        self.sum_d += float(d.sum())
        self.sum_d2 += float((d * d).sum())
        self.sum_abs += float(np.abs(d).sum())
        self.abs_far += rng.binomial(m, truth.get("abs_far", 0.02))
        if load is not None:
            per = np.full(len(load), m // len(load))
            per[: m % len(load)] += 1
            for j, (k, lf) in enumerate(zip(per, load, strict=True)):
                if k:
                    # a block's P95 ratio moves with the calls' own spread: heavy tails (t, 3 df) say more
                    spread = rng.standard_t(3) / math.sqrt(3) if heavy else rng.normal()
                    noise = spread * LAT_SIGMA * math.sqrt(2) / math.sqrt(k)
                    self.slices.append((int(k), float(math.log(truth.get("ratio", 1.0)) + lf + noise), (t0_slice + j) * SLICE_S))

    def stats(self) -> dict[str, Any]:
        return {
            "n_req": self.n, "n_pair": self.n, "n_lab": self.n, "flips": self.flips,
            "n_lab_r": self.n if self.noise_floor else 0, "flips_r": self.flips_r,
            "n_s": self.n, "far": self.far, "n_s_r": self.n, "far_r": self.far_r,
            "sum_d": self.sum_d, "sum_d2": self.sum_d2, "sum_abs_d": self.sum_abs,
            "c_err_n": self.errors, "c_timeout_n": 0, "c_throttled_n": 0, "b_err_n": 0,
            "abs_d_grid": [0.1 * f for f in ABS_GRID],
        }  # fmt: skip

    def latency_inputs(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Pooled quantiles and the blocks diff/aggregate.py cuts (at most 100, in call order),
        each with its calls (one row a call here) and the time of its first call."""
        ks = np.array([k for k, _, _ in self.slices], dtype=float)
        logs = np.array([v for _, v, _ in self.slices])
        pooled = float((ks * logs).sum() / ks.sum())
        s = {"n_bl": self.n, "n_cl": self.n, "n_pair": self.n, "b_lat_q": BASE_QUANTILES,
             "c_lat_q": [b * math.exp(pooled) for b in BASE_QUANTILES]}  # fmt: skip
        blocks = []
        count = agg.last_block(self.n, agg.block_size(self.n)) + 1
        b95 = 50.0 * math.exp(LAT_SIGMA * Z95)
        for idx in np.array_split(np.arange(len(self.slices)), min(count, len(self.slices))):
            n = int(ks[idx].sum())
            lr = float((ks[idx] * logs[idx]).sum() / n)
            first = T0 + timedelta(seconds=self.slices[int(idx[0])][2])
            blocks.append({"n": n, "calls": n, "first_call": {"k0": first}, "b_q": [50.0, b95, b95 * 1.2],
                           "c_q": [50.0, b95 * math.exp(lr), b95 * 1.2]})  # fmt: skip
        return s, blocks


def _z(f: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(f))


BASE_QUANTILES = [50.0 * math.exp(LAT_SIGMA * _z(f)) for f in LAT_GRID]  # the baseline's latency quantiles, ms


def results_for(seg_name: str, seg: Segment, checks: list[Check]) -> list[ck.CheckResult]:
    s = seg.stats()
    out: list[ck.CheckResult | None] = []
    for chk in checks:
        thr, sev, kind = chk.threshold, chk.severity, chk.kind
        if kind == "label_flip":
            out.append(ck.label_flip(chk, seg_name, s, thr, sev))
        elif kind == "score_diff":
            out.append(ck.score_diff(chk, seg_name, s, thr, sev))
        elif kind == "score_shift":
            out.append(ck.score_shift(chk, seg_name, s, thr, sev))
        elif kind == "abs_score_diff":
            out.append(ck.abs_score_diff(chk, seg_name, s, thr, sev))
        elif kind == "abs_diff_quantile":
            out.append(ck.abs_diff_quantile(chk, seg_name, s, thr, sev, ABS_GRID, seg.abs_far))
        elif kind == "error_rate":
            out.append(ck.error_rate(chk, seg_name, s, thr, sev, None))
        elif kind == "latency":
            ls, blocks = seg.latency_inputs()
            out.append(ck.latency(chk, seg_name, ls, thr, sev, LAT_GRID, None, blocks, 1))
    return [r for r in out if r is not None]


def ar1_load(rng: np.random.Generator, steps: int, sigma: float, phi: float) -> np.ndarray:
    """Log load factor of one server over time, per slice: bursts that last 1/(1-phi) slices."""
    x = np.empty(steps)
    x[0] = rng.normal(0, sigma)
    eps = rng.normal(0, sigma * math.sqrt(1 - phi * phi), steps)
    for t in range(1, steps):
        x[t] = phi * x[t - 1] + eps[t]
    return x


# name: (check, truth exactly at its threshold, noise floor measured, bursts)
MARGINS: dict[str, tuple[Check, dict[str, float], bool, tuple[float, float] | None]] = {
    "label_flip +1 pt (floor)": (check("label_flip"), {"flip_excess": 0.01}, True, None),
    "label_flip +5 pt (floor)": (check("label_flip", threshold=0.05), {"flip_excess": 0.05}, True, None),
    "flip rate 1 % (no floor)": (check("label_flip"), {"flip_rate": 0.01}, False, None),
    "flip rate 5 % (no floor)": (check("label_flip", threshold=0.05), {"flip_rate": 0.05}, False, None),
    "error_rate 1 %": (check("error_rate", threshold=0.01), {"error_rate": 0.01}, True, None),
    "error_rate 5 %": (check("error_rate"), {"error_rate": 0.05}, True, None),
    "score_shift": (check("score_shift"), {"shift": 0.02}, True, None),
    "abs_score_diff": (check("abs_score_diff"), {"sd": 0.05 / math.sqrt(2 / math.pi)}, True, None),
    "abs_diff_q p99 (1 %)": (check("abs_diff_quantile", quantile=0.99), {"abs_far": 0.01}, True, None),
    "abs_diff_q p95 (5 %)": (check("abs_diff_quantile"), {"abs_far": 0.05}, True, None),
    "latency x1.3, no bursts": (check("latency"), {"ratio": 1.3}, True, (0.0, 0.0)),
    "latency x1.3, 0.085/0.6": (check("latency"), {"ratio": 1.3}, True, MEASURED),
    "latency x1.3, 0.15/0.95": (check("latency"), {"ratio": 1.3}, True, HARSH),
}


def margin_run(args: tuple[str, int, int]) -> str:
    """The first terminal answer of one check in `all`: 'within', 'fail' or 'none'."""
    name, seed, every = args
    chk, truth, floor, bursts = MARGINS[name]
    rng = np.random.default_rng(seed)
    seg = Segment(noise_floor=floor)
    pol = Policy()
    slices = MAX_PAIRS // SLICE
    load = None
    if bursts is not None:
        load = ar1_load(rng, slices, bursts[0], bursts[1]) - ar1_load(rng, slices, bursts[0], bursts[1])
    done = 0
    for n in schedule(every):
        sl = load[done // SLICE : n // SLICE] if load is not None else None
        seg.add(rng, n - done, truth, sl if sl is None or len(sl) else load[done // SLICE : done // SLICE + 1], done // SLICE)
        done = n
        res = results_for("all", seg, [chk])
        decide(res, pol, n, Family(checks=frozenset({chk.id})))
        if any(r.status == ck.FAIL for r in res):
            return "fail"
        if res and all(r.status == ck.PASS for r in res):
            return "within"
    return "none"


DEFAULT_CRITICAL = [CHECKS[i] for i in ("label_flip", "score_diff", "score_shift", "error_rate", "latency_p95")]
HALF = {"flip_excess": 0.005, "far_excess": 0.025, "shift": 0.01, "error_rate": 0.025, "ratio": 1.14}


def verdict(res: list[ck.CheckResult], segs: list[Segment], n: int, pol: Policy) -> str:
    """The judge's rule: NO_GO on a failure; PENDING while a non-rare segment is short of
    min_samples or a critical check of a non-rare segment is undecided; else GO."""
    if any(r.status == ck.FAIL for r in res):
        return "no_go"
    rare = {f"seg=s{i:02d}" for i, s in enumerate(segs) if s.n < pol.min_segment_share * n}
    if any(s.n < pol.min_samples for i, s in enumerate(segs) if f"seg=s{i:02d}" not in rare):
        return "pending"
    if any(r.status == ck.UNDECIDED and r.segment not in rare for r in res):
        return "pending"
    return "go"


def multi_run(args: tuple[str, int, int]) -> list[dict[str, Any]]:
    """30 segments x the default critical checks, per candidate: the first terminal verdict,
    the pairs it came at and whether it named s00."""
    experiment, seed, every = args
    rng = np.random.default_rng(seed)
    segments = 30
    candidates = 3 if experiment == "aa" else 1
    sigma, phi = {"aa": HARSH, "go": MEASURED, "power": MEASURED}[experiment]
    shares = np.full(segments, 1.0 / segments)
    truth_of: list[dict[str, float]] = [{} for _ in range(segments)]
    if experiment == "power":
        shares = np.concatenate([[0.03], np.full(segments - 1, 0.97 / (segments - 1))])
        truth_of[0] = {"flip_excess": 0.05}
    if experiment == "go":
        truth_of = [dict(HALF) for _ in range(segments)]
    pol = Policy()
    family = Family.declared([(), ("seg",)], pol, [c.id for c in DEFAULT_CRITICAL] + ["dead_letters"], candidates)
    slices = MAX_PAIRS // SLICE
    base_load = ar1_load(rng, slices, sigma, phi)
    out = []
    for _ in range(candidates):
        load = ar1_load(rng, slices, sigma, phi) - base_load
        segs = [Segment() for _ in range(segments)]
        whole = Segment()
        done = 0
        first: dict[str, Any] = {"verdict": "none", "pairs": None, "named": False}
        for n in schedule(every):
            counts = rng.multinomial(n - done, shares)
            lo, hi = done // SLICE, max(n // SLICE, done // SLICE + 1)
            sl = load[lo:hi]
            for i, seg in enumerate(segs):
                seg.add(rng, int(counts[i]), truth_of[i], sl, lo, heavy=experiment == "aa")
            # `all` is the union; its statistics are simulated apart with the typical segment's truth
            whole.add(rng, n - done, truth_of[1], sl, lo, heavy=experiment == "aa")
            done = n
            res = results_for("all", whole, DEFAULT_CRITICAL)
            for i, seg in enumerate(segs):
                if seg.n >= pol.min_samples:
                    res += results_for(f"seg=s{i:02d}", seg, DEFAULT_CRITICAL)
            decide(res, pol, n, family)
            v = verdict(res, segs, n, pol)
            if v != "pending":
                failing = {r.segment for r in res if r.status == ck.FAIL}
                first = {"verdict": v, "pairs": n, "named": "seg=s00" in failing}
                break
        out.append(first)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--margin-runs", type=int, default=400)
    ap.add_argument("--looks", type=int, default=1000, help="pairs between looks: 1000 (from 1,000) or 100 (from 500)")
    ap.add_argument("--quick", action="store_true", help="a few runs each, to see it work")
    ap.add_argument("--experiments", default="margin,power,go,aa", help="which of margin, power, go, aa (comma-separated)")
    a = ap.parse_args()
    runs, margin_runs = (20, 40) if a.quick else (a.runs, a.margin_runs)
    chosen = set(a.experiments.split(","))
    print(f"first terminal verdict; looks every {a.looks} pairs from {schedule(a.looks)[0]:,} to {MAX_PAIRS:,}; "
          f"alpha {Policy().alpha}; segment margin {Policy().segment_margin:g}; {SLICE} pairs = {SLICE_S:g} s")  # fmt: skip
    with multiprocessing.Pool(2) as pool:
        if "margin" in chosen:
            print(f"\n[margin] one check in `all`, true value exactly at its threshold ({margin_runs} runs each)")
            print(f"  {'check':<26} {'first: shown within':>20} {'first: NO_GO':>16}")
            for name in MARGINS:
                got = pool.map(margin_run, [(name, 1000 + i, a.looks) for i in range(margin_runs)])
                print(f"  {name:<26} {share(got.count('within'), margin_runs):>20} {share(got.count('fail'), margin_runs):>16}")
        for experiment, what in (
            ("power", "+5 points of flips in a 3 % segment of 30"),
            ("go", "sound candidate at half the margins, bursts 0.085/0.6"),
            ("aa", "A/A, 3 candidates, bursts 0.15/0.95, heavy-tailed latency"),
        ):
            if experiment not in chosen:
                continue
            got = pool.map(multi_run, [(experiment, 5000 + i, a.looks) for i in range(runs)])
            firsts = [f for g in got for f in g]
            go = [f["pairs"] for f in firsts if f["verdict"] == "go"]
            nogo = [f for f in firsts if f["verdict"] == "no_go"]
            med = lambda xs: f"median {statistics.median(xs):,.0f} pairs" if xs else "-"  # noqa: E731
            print(f"\n[{experiment}] {what} ({runs} runs): first terminal verdict")
            print(f"  GO    {share(len(go), len(firsts))}  {med(go)}")
            print(f"  NO_GO {share(len(nogo), len(firsts))}  {med([f['pairs'] for f in nogo])}")
            if experiment == "power":
                print(f"  NO_GO naming the segment {share(sum(f['named'] for f in nogo), len(firsts))}")
            if experiment == "aa":
                anyone = sum(any(f["verdict"] == "no_go" for f in g) for g in got)
                print(f"  runs with any false NO_GO among 3 candidates {share(anyone, runs)}")


if __name__ == "__main__":
    main()
