"""Validation of the gate's statistics by simulation (prints rates; not a test).

- A/A: candidate == baseline with realistic noise (1% label noise between calls, score jitter,
  same latency distribution), 30 segments, 50k pairs: the false NO_GO rate (target <= 1%).
- Planted regression: +5 percentage points of label flips in one segment carrying 3% of the
  traffic, 50k pairs: the share of runs that say NO_GO naming that segment (target >= 95%).

    python bench/validate_gate.py --runs 200
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shadowdiff.diff.judge import judge
from shadowdiff.diff.load import open_run
from shadowdiff.diff.testing import Scenario, write_synthetic_store
from shadowdiff.schemas.policy import Policy
from shadowdiff.schemas.verdict import Verdict


def one(home: Path, run_id: str, scenario: Scenario, policy: Policy) -> Verdict:
    write_synthetic_store(home / run_id / "store-w0.duckdb", scenario, run_id)
    con = open_run(home, run_id)
    try:
        return judge(con, policy)
    finally:
        con.close()
        shutil.rmtree(home / run_id)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=50_000)
    args = ap.parse_args()
    policy = Policy()
    home = Path(tempfile.mkdtemp(prefix="shadowdiff-validate-"))
    t0 = time.time()
    false_no_go = pending = 0
    for i in range(args.runs):
        doc = one(home, f"aa{i}", Scenario(n=args.pairs, segments=30, seed=10_000 + i), policy)
        false_no_go += doc.verdict == "no_go"
        pending += doc.verdict == "pending"
        if doc.verdict == "no_go":
            print(f"  A/A run {i}: false NO_GO: {doc.reasons[:2]}")
    print(
        f"A/A: {args.runs} runs x 30 segments x {args.pairs} pairs, policy {policy.correction} alpha={policy.alpha}: "
        f"false NO_GO rate {false_no_go / args.runs:.2%} (target <= 1%), pending {pending}"
    )
    caught = 0
    weights = [3.0] + [97.0 / 29] * 29
    for i in range(args.runs):
        doc = one(
            home,
            f"pl{i}",
            Scenario(n=args.pairs, segments=30, weights=weights, flip_extra={0: 0.05}, seed=20_000 + i),
            policy,
        )
        caught += doc.verdict == "no_go" and "seg=s00" in doc.failing_segments
    print(
        f"planted +5pp label flips in a 3% segment: caught (NO_GO naming seg=s00) in {caught / args.runs:.1%} "
        f"of {args.runs} runs (target >= 95%)"
    )
    print(f"elapsed {time.time() - t0:.0f} s")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
