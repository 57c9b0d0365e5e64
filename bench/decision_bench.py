"""The decision rule as a watched run sees it: judged every 1,000 pairs up to 100k (100 looks).
Simulates each segment's sufficient statistics, builds the check results with diff/checks.py's
own functions and decides with diff/decide.py, under the anytime rule (the default) and, side
by side, the fixed-sample rule read at every look.

    python bench/decision_bench.py [--runs 200] [--quick]

Prints, per experiment, rates over runs (a rate is a share of runs, with its binomial standard
error):
- margin: per check kind, a candidate exactly at the threshold: P(ever NO_GO) and P(ever shown
  within = GO for that check), anytime vs fixed. Target: both <= alpha for the anytime rule.
- aa: 30 segments x the default critical checks, latency with bursts (an AR(1) load factor per
  server shared by neighbouring calls): P(ever NO_GO). Target <= 1 %.
- power: +5 points of label flips in a 3 % segment: P(NO_GO naming it by 100k) and the median
  pairs to detection, anytime vs fixed. Target >= 95 %.
- go: a sound candidate (true values at half the margins): P(GO by 100k) and median pairs, as the
  judge decides by default (proof in `all`) and with prove_in_segments = true.
  Target >= 90 %.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diff import aggregate as agg
from diff import checks as ck
from diff.decide import decide
from schemas.policy import Check, Policy

LOOK = 1000
LOOKS = 100
NOISE_FLIP = 0.01
LAT_QS = [0.5, 0.95, 0.99]
LAT_GRID = agg.latency_grid(LAT_QS)
Z95 = 1.6448536269514722
LAT_SIGMA = 0.4  # spread of one call's log latency
ABS_GRID = agg.latency_grid([0.95])


def policy(decision: str) -> Policy:
    return Policy(decision=decision)  # type: ignore[arg-type]


CHECKS = {c.id: c for c in Policy().checks}
CHECKS["abs_score_diff"] = Check.model_validate({"id": "abs_score_diff", "kind": "abs_score_diff"})
CHECKS["abs_diff_quantile"] = Check.model_validate({"id": "abs_diff_quantile", "kind": "abs_diff_quantile"})


class Segment:
    """Running sufficient statistics of one segment's pairs."""

    def __init__(self) -> None:
        self.n = 0
        self.flips = self.flips_r = self.far = self.far_r = self.errors = 0
        self.sum_d = self.sum_d2 = self.sum_abs = 0.0
        self.abs_far = 0
        self.blocks: list[tuple[int, float]] = []  # (pairs, sum of per-call log ratios) per time slice

    def add(self, rng: np.random.Generator, m: int, truth: dict[str, float], load: np.ndarray | None) -> None:
        self.n += m
        self.flips += rng.binomial(m, NOISE_FLIP + truth.get("flip_excess", 0.0))
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
            # this look's calls of the segment spread over the look's stretch of load: per slice,
            # the candidate's and baseline's load factors and each call's own spread
            per = np.full(len(load), m // len(load))
            per[: m % len(load)] += 1
            for k, lf in zip(per, load, strict=True):
                if k:
                    noise = rng.normal(0, LAT_SIGMA * math.sqrt(2) / math.sqrt(k))
                    self.blocks.append((int(k), float(math.log(truth.get("ratio", 1.0)) + lf + noise)))

    def stats(self) -> dict[str, Any]:
        return {
            "n_req": self.n,
            "n_pair": self.n,
            "n_lab": self.n,
            "flips": self.flips,
            "n_lab_r": self.n,
            "flips_r": self.flips_r,
            "n_s": self.n,
            "far": self.far,
            "n_s_r": self.n,
            "far_r": self.far_r,
            "sum_d": self.sum_d,
            "sum_d2": self.sum_d2,
            "sum_abs_d": self.sum_abs,
            "c_err_n": self.errors,
            "c_timeout_n": 0,
            "c_throttled_n": 0,
            "b_err_n": 0,
            "abs_d_grid": [0.1 * f for f in ABS_GRID],
        }

    def latency_inputs(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Pooled quantiles and wall-clock blocks as diff/aggregate.py cuts them (a power of two of
        pairs, 50-100 blocks), here over whole slices."""
        ks = np.array([k for k, _ in self.blocks], dtype=float)
        logs = np.array([v for _, v in self.blocks])
        pooled = float((ks * logs).sum() / ks.sum())
        base = BASE_QUANTILES
        s = {"n_bl": self.n, "n_cl": self.n, "n_pair": self.n, "b_lat_q": base, "c_lat_q": [b * math.exp(pooled) for b in base]}
        blocks = []
        count = agg.last_block(self.n, agg.block_size(self.n)) + 1
        for idx in np.array_split(np.arange(len(self.blocks)), min(count, len(self.blocks))):
            n = int(ks[idx].sum())
            lr = float((ks[idx] * logs[idx]).sum() / n)
            b95 = 50.0 * math.exp(LAT_SIGMA * Z95)
            blocks.append({"n": n, "b_q": [50.0, b95, b95 * 1.2], "c_q": [50.0, b95 * math.exp(lr), b95 * 1.2]})
        return s, blocks


def _z(f: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(f))


BASE_QUANTILES = [50.0 * math.exp(LAT_SIGMA * _z(f)) for f in LAT_GRID]  # the baseline's latency quantiles, ms


def results_for(seg_name: str, seg: Segment, kinds: list[str]) -> list[ck.CheckResult]:
    s = seg.stats()
    out: list[ck.CheckResult | None] = []
    for kind in kinds:
        chk = CHECKS[kind]
        thr, sev = chk.threshold, chk.severity
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
        elif kind == "latency_p95":
            ls, blocks = seg.latency_inputs()
            out.append(ck.latency(chk, seg_name, ls, thr, sev, LAT_GRID, None, blocks, 1))
    return [r for r in out if r is not None]


def ar1_load(rng: np.random.Generator, steps: int, sigma: float, phi: float = 0.95) -> np.ndarray:
    """Log load factor of one server over time: bursts that last tens of steps."""
    x = np.empty(steps)
    x[0] = rng.normal(0, sigma)
    eps = rng.normal(0, sigma * math.sqrt(1 - phi * phi), steps)
    for t in range(1, steps):
        x[t] = phi * x[t - 1] + eps[t]
    return x


MARGIN_TRUTH = {
    "label_flip": {"flip_excess": 0.01},
    "error_rate": {"error_rate": 0.05},
    "score_shift": {"shift": 0.02},
    "abs_score_diff": {"sd": 0.05 / math.sqrt(2 / math.pi)},  # E|d| of N(0, sd) is the threshold
    "abs_diff_quantile": {"abs_far": 0.05},
    "latency_p95": {"ratio": 1.3},
}


def margin_run(args: tuple[str, int]) -> dict[str, bool]:
    kind, seed = args
    rng = np.random.default_rng(seed)
    seg = Segment()
    fixed, anytime = policy("fixed"), policy("anytime")
    out = {"fail_any": False, "within_any": False, "fail_fix": False, "within_fix": False}
    for _ in range(LOOKS):
        load = rng.normal(0, 0.0, 10) if kind == "latency_p95" else None
        seg.add(rng, LOOK, MARGIN_TRUTH[kind], load)
        for pol, tag in ((anytime, "any"), (fixed, "fix")):
            res = results_for("all", seg, [kind])
            decide(res, pol, seg.n)
            out[f"fail_{tag}"] |= any(r.status == ck.FAIL for r in res)
            out[f"within_{tag}"] |= any(r.status == ck.PASS for r in res)
    return out


DEFAULT_CRITICAL = ["label_flip", "score_diff", "score_shift", "error_rate", "latency_p95"]
# what each experiment reports: the look of the first NO_GO, of the first naming s00, of the first GO
REPORTED = {"aa": "nogo", "power": "named", "go": "go", "go-strict": "go"}


def multi_run(args: tuple[str, int, int, float, float]) -> dict[str, Any]:
    """30 segments (one of 3 % in the power experiment) under both rules; returns the look of the
    first NO_GO, of the first NO_GO naming s00, and of the first GO, per rule. `server_sigma`:
    the spread of each server's own AR(1) log load factor (a load both servers share cancels in
    the blocks' paired ratios, so only each server's own part is simulated); `server_phi`, its
    correlation from one slice of 100 pairs to the next."""
    experiment, seed, segments, server_sigma, server_phi = args
    rng = np.random.default_rng(seed)
    shares = np.full(segments, 1.0 / segments)
    truth_of = [dict() for _ in range(segments)]
    if experiment == "power":
        shares = np.concatenate([[0.03], np.full(segments - 1, 0.97 / (segments - 1))])
        truth_of[0] = {"flip_excess": 0.05}
    if experiment in ("go", "go-strict"):
        half = {"flip_excess": 0.005, "far_excess": 0.025, "shift": 0.01, "error_rate": 0.025, "ratio": 1.14}
        truth_of = [dict(half) for _ in range(segments)]
    segs = [Segment() for _ in range(segments)]
    whole = Segment()
    # a shared load per server, in slices of 100 pairs: bursts hit one server more than the other
    load = ar1_load(rng, LOOKS * 10, server_sigma, server_phi) - ar1_load(rng, LOOKS * 10, server_sigma, server_phi)
    first: dict[str, int | None] = {f"{e}_{t}": None for e in ("nogo", "named", "go") for t in ("any", "fix")}
    strict = experiment == "go-strict"
    pols = {
        "any": Policy(decision="anytime", prove_in_segments=strict),
        "fix": Policy(decision="fixed", prove_in_segments=strict),
    }
    # a run stops being judged under a rule once what the experiment reports is known
    reported = REPORTED[experiment]
    for look in range(LOOKS):
        if all(first[f"{reported}_{tag}"] is not None for tag in pols):
            break
        counts = rng.multinomial(LOOK, shares)
        sl = load[look * 10 : (look + 1) * 10]
        for i, seg in enumerate(segs):
            seg.add(rng, int(counts[i]), truth_of[i] or {}, sl)
        whole.add(rng, LOOK, truth_of[1] if experiment in ("go", "go-strict") else {}, sl)
        n = (look + 1) * LOOK
        for tag, pol in pols.items():
            if first[f"{reported}_{tag}"] is not None:
                continue
            res = results_for("all", whole, DEFAULT_CRITICAL)
            for i, seg in enumerate(segs):
                if seg.n >= pol.min_samples:
                    res += results_for(f"seg=s{i:02d}", seg, DEFAULT_CRITICAL)
            decide(res, pol, n)
            failing = {r.segment for r in res if r.status == ck.FAIL}
            if failing and first[f"nogo_{tag}"] is None:
                first[f"nogo_{tag}"] = n
            if "seg=s00" in failing and first[f"named_{tag}"] is None:
                first[f"named_{tag}"] = n
            # GO as the judge gives it: nothing shown worse, no segment short of pairs, every
            # check of `all` shown within (with prove_in_segments, every segment's too)
            short = any(seg.n < pol.min_samples for seg in segs)
            proven = all(r.status == ck.PASS for r in res if pol.prove_in_segments or r.segment == "all")
            if not failing and not short and proven and first[f"go_{tag}"] is None:
                first[f"go_{tag}"] = n
    return first


def share(hits: int, runs: int) -> str:
    p = hits / runs
    return f"{p:6.2%} ± {math.sqrt(max(p * (1 - p), 1 / runs) / runs):.2%}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--margin-runs", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="a few runs each, to see it work")
    ap.add_argument("--skip-margin", action="store_true")
    ap.add_argument(
        "--experiments", default="aa,power,go,go-strict", help="which of aa, power, go, go-strict to run (comma-separated)"
    )
    ap.add_argument(
        "--server-sigma",
        type=float,
        default=0.15,
        help="spread of each server's own log load factor (AR(1) over slices of 100 pairs; bench/burst_noise.py measures it)",
    )
    ap.add_argument("--server-phi", type=float, default=0.95, help="that load's correlation from one slice to the next")
    a = ap.parse_args()
    runs, margin_runs = (20, 40) if a.quick else (a.runs, a.margin_runs)
    chosen = set(a.experiments.split(","))
    alpha = Policy().alpha
    print(f"looks every {LOOK} pairs up to {LOOK * LOOKS:,}; alpha {alpha}; anytime horizon {Policy().anytime_horizon:,}")
    print(f"latency bursts: each server's own AR(1) log load factor, sd {a.server_sigma:g}, phi {a.server_phi:g} per 100 pairs")
    with multiprocessing.Pool(2) as pool:
        kinds = [] if a.skip_margin else list(MARGIN_TRUTH)
        print("\n[margin] true value exactly at the threshold, one segment")
        head = f"  {'kind':<18} {'anytime: ever NO_GO':>22} {'ever shown within':>20}"
        print(head + f"   {'fixed: ever NO_GO':>20} {'ever pass':>16}")
        for kind in kinds:
            got = pool.map(margin_run, [(kind, 1000 + i) for i in range(margin_runs)])
            c = {k: sum(g[k] for g in got) for k in got[0]}
            print(
                f"  {kind:<18} {share(c['fail_any'], margin_runs):>22} {share(c['within_any'], margin_runs):>20}"
                f"   {share(c['fail_fix'], margin_runs):>20} {share(c['within_fix'], margin_runs):>16}"
            )
        for experiment, what in (
            ("aa", "A/A, 30 segments, latency bursts: false NO_GO over all looks"),
            ("power", "+5 points of flips in a 3 % segment: NO_GO naming it"),
            ("go", "sound candidate at half the margins, 30 segments: GO reached"),
        ):
            if experiment not in chosen:
                continue
            got = pool.map(multi_run, [(experiment, 5000 + i, 30, a.server_sigma, a.server_phi) for i in range(runs)])
            print(f"\n[{experiment}] {what} ({runs} runs)")
            key = REPORTED[experiment]
            for tag, name in (("any", "anytime"), ("fix", "fixed, read at every look")):
                firsts = [g[f"{key}_{tag}"] for g in got if g[f"{key}_{tag}"] is not None]
                median = f"median {statistics.median(firsts):,.0f} pairs" if firsts else "never"
                print(f"  {name:<28} {share(len(firsts), runs)}   {median}")
        if "go-strict" not in chosen:
            return
        got = pool.map(multi_run, [("go-strict", 7000 + i, 30, a.server_sigma, a.server_phi) for i in range(runs)])
        print(f"\n[go-strict] the same with prove_in_segments = true: GO reached ({runs} runs)")
        for tag, name in (("any", "anytime"), ("fix", "fixed, read at every look")):
            firsts = [g[f"go_{tag}"] for g in got if g[f"go_{tag}"] is not None]
            median = f"median {statistics.median(firsts):,.0f} pairs" if firsts else "never"
            print(f"  {name:<28} {share(len(firsts), runs)}   {median}")


if __name__ == "__main__":
    main()
