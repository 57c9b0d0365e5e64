"""Outcome checks as a watched pipeline sees them: the FIRST terminal verdict (GO or NO_GO) of
each simulated run, judged at every look as outcomes arrive (every 1,000 outcomes). Simulates
each segment's counts of pairs by who was right (both, neither, only the baseline, only the
candidate), builds the results with diff/outcome_checks.py's own function and decides with
diff/decide.py over the declared family, as the judge does.

    python bench/outcome_bench.py [--runs 200] [--max-outcomes 600000]

Experiments (a baseline error rate of 10 %, 6 % of pairs discordant when the models are equal,
threshold (margin) +1 point, alpha 0.01, 10 segments: one of 5 % of the traffic, nine sharing
the rest):
- segment: the candidate 2 points worse in the 5 % segment only. Target: first terminal NO_GO
  naming that segment >= 95 %, first terminal GO <= 1 %.
- margin: the candidate exactly 1 point worse everywhere, with 6 % and with 1.2 % of pairs
  discordant. Target: the whole run wrongly shown within (first terminal GO) <= alpha.
- better: the candidate 2 points better everywhere: reaches GO, and is reported better with
  its interval; median outcomes to GO.
- sound: equal models: first terminal GO >= 90 % by max-outcomes, NO_GO <= 1 %, median
  outcomes; and the outcomes the same rule needs to show `all` within when the two error rates
  are compared unpaired (as two periods or two groups would be), against the paired test.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import share

from shadowdiff.diff import checks as ck
from shadowdiff.diff.decide import Family, decide
from shadowdiff.diff.outcome_checks import outcome_check, say_better
from shadowdiff.schemas.policy import Check, Policy

LOOK = 1_000
BASE_ERR = 0.10
DISCORDANT = 0.06
MARGIN = 0.01
SHARES = [0.05] + [0.95 / 9] * 9
CHECK = Check.model_validate({"id": "accuracy", "kind": "outcome_error", "threshold": MARGIN})
POLICY = Policy(checks=[CHECK], min_outcomes=200)
FAMILY = Family.declared([(), ("seg",)], POLICY, [CHECK.id], 1)


def cell_probabilities(delta: float, discordant: float) -> list[float]:
    """P(both right), P(both wrong), P(only the candidate wrong), P(only the baseline wrong) for
    a candidate `delta` worse in error rate, with `discordant` of the pairs discordant."""
    c_only, b_only = (discordant + delta) / 2, (discordant - delta) / 2
    both_wrong = BASE_ERR - b_only
    return [1 - both_wrong - c_only - b_only, both_wrong, c_only, b_only]


def stats_of(counts: np.ndarray) -> dict[str, Any]:
    right, both, c_only, b_only = (int(x) for x in counts)
    n = right + both + c_only + b_only
    return {
        "n_pairs": n,
        "n_out": n,
        "n_cls": n,
        "c_only_wrong": c_only,
        "b_only_wrong": b_only,
        "b_wrong": both + b_only,
        "c_wrong": both + c_only,
    }


def judge_look(per_segment: dict[str, np.ndarray]) -> tuple[str, list[ck.CheckResult]]:
    results = []
    for seg, counts in per_segment.items():
        r = outcome_check(CHECK, seg, stats_of(counts), CHECK.threshold, CHECK.severity, POLICY.min_outcomes)
        if r is not None:
            results.append(r)
    n_all = int(per_segment["all"].sum())
    decide(results, POLICY, n_all, FAMILY)
    say_better(results)
    if any(r.status == ck.FAIL for r in results):
        return "no_go", results
    if all(r.status == ck.PASS for r in results):
        return "go", results
    return "pending", results


def run_once(args: tuple[str, int, int, float, float, bool]) -> dict[str, Any]:
    """One run: the first terminal verdict, the outcomes it took and the segments that failed."""
    experiment, seed, max_outcomes, delta_all, discordant, segmented = args
    rng = np.random.default_rng(seed)
    shares = SHARES if segmented else [1.0]
    probs = []
    for i in range(len(shares)):
        delta = 0.02 if experiment == "segment" and i == 0 else (0.0 if experiment == "segment" else delta_all)
        probs.append(cell_probabilities(delta, discordant))
    totals = [np.zeros(4, dtype=np.int64) for _ in shares]
    for look in range(1, max_outcomes // LOOK + 1):
        arrivals = rng.multinomial(LOOK, shares)
        for i, k in enumerate(arrivals):
            totals[i] += rng.multinomial(k, probs[i])
        per_segment = {"all": sum(totals)}
        if segmented:
            per_segment |= {f"seg=s{i}": t for i, t in enumerate(totals)}
        verdict, results = judge_look(per_segment)
        if verdict != "pending":
            whole = next(r for r in results if r.segment == "all")
            return {
                "verdict": verdict,
                "outcomes": look * LOOK,
                "failing": sorted({r.segment for r in results if r.status == ck.FAIL}),
                "better": bool(whole.extra.get("candidate_better")),
                "ci": whole.ci,
            }
    return {"verdict": "pending", "outcomes": max_outcomes, "failing": [], "better": False, "ci": None}


def unpaired_needed(seed: int, max_outcomes: int) -> int | None:
    """Outcomes at which equal models' error rates, compared unpaired (the variance of two
    independent rates, p(1-p)/n each), are shown within the margin in `all` by the same
    anytime rule; None if not by max_outcomes."""
    from shadowdiff.diff import sequential

    rng = np.random.default_rng(seed)
    b = c = 0
    for look in range(1, max_outcomes // LOOK + 1):
        n = look * LOOK
        b += int(rng.binomial(LOOK, BASE_ERR))
        c += int(rng.binomial(LOOK, BASE_ERR))
        pb, pc = (b + 0.5) / (n + 1), (c + 0.5) / (n + 1)
        est = pc - pb
        se = math.sqrt((pb * (1 - pb) + pc * (1 - pc)) / n)
        p_within = sequential.p_value((est - MARGIN) / se * -1, n, POLICY.anytime_horizon, POLICY.alpha)
        if p_within < POLICY.alpha:
            return n
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--max-outcomes", type=int, default=600_000)
    a = ap.parse_args()
    runs, top = a.runs, a.max_outcomes
    experiments = {
        "segment: 2 points worse in a 5 % segment": ("segment", 0.0, DISCORDANT, True),
        "margin: 1 point worse everywhere, 6 % discordant (whole run)": ("margin", MARGIN, DISCORDANT, False),
        "margin: 1 point worse everywhere, 1.2 % discordant (whole run)": ("margin", MARGIN, 0.012, False),
        "better: 2 points better everywhere": ("better", -0.02, DISCORDANT, True),
        "sound: equal models": ("sound", 0.0, DISCORDANT, True),
    }
    with multiprocessing.Pool() as pool:
        for title, (name, delta, disc, segmented) in experiments.items():
            out = pool.map(run_once, [(name, seed, top, delta, disc, segmented) for seed in range(runs)])
            go = [r for r in out if r["verdict"] == "go"]
            no_go = [r for r in out if r["verdict"] == "no_go"]
            print(f"{title}  ({runs} runs, looks every {LOOK:,} outcomes up to {top:,})")
            print(f"  first terminal GO    {share(len(go), runs)}")
            print(f"  first terminal NO_GO {share(len(no_go), runs)}")
            if name == "segment":
                named = [r for r in no_go if "seg=s0" in r["failing"]]
                print(f"  NO_GO naming the 5 % segment {share(len(named), runs)}")
            if name == "better":
                print(f"  reported better with its interval {share(sum(r['better'] for r in go), runs)}")
            decided = [r["outcomes"] for r in out if r["verdict"] != "pending"]
            if decided:
                print(f"  median outcomes to the first terminal verdict {statistics.median(decided):,.0f}")
            if name == "sound":
                unpaired = [u for u in pool.starmap(unpaired_needed, [(s, top * 3) for s in range(runs)]) if u is not None]
                paired_all = pool.map(_paired_all_within, [(s, top) for s in range(runs)])
                paired_all = [p for p in paired_all if p is not None]
                if unpaired and paired_all:
                    pm, um = statistics.median(paired_all), statistics.median(unpaired)
                    print(
                        f"  `all` shown within: paired median {pm:,.0f} outcomes, unpaired {um:,.0f} "
                        f"({len(unpaired)}/{runs} runs by {top * 3:,}): {um / pm:.1f}x as many unpaired"
                    )
            print(flush=True)


def _paired_all_within(args: tuple[int, int]) -> int | None:
    """Outcomes at which the paired test shows equal models within the margin in `all`."""
    seed, top = args
    rng = np.random.default_rng(seed)
    total = np.zeros(4, dtype=np.int64)
    probs = cell_probabilities(0.0, DISCORDANT)
    for look in range(1, top // LOOK + 1):
        total += rng.multinomial(LOOK, probs)
        _, results = judge_look({"all": total})
        if results[0].status == ck.PASS:
            return look * LOOK
    return None


if __name__ == "__main__":
    main()
