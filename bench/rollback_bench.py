"""Rollback verification as a pipeline sees it (issue: canary analysis and rollback verification):
the FIRST terminal verdict of each simulated rollback, judged by the product's own served judge
(diff/served.py over the records decoded by replay/served.py's codec) every `--look-minutes` of
traffic since the rollback, against a last-known-good window (40 minutes) of the same version a week before.

    python bench/rollback_bench.py [--runs 100] [--minutes 40] [--look-minutes 4] [--cases exact]

Traffic: shadowdiff/cli/served_traffic.py (50 requests a second, regions eu 45 %, us 40 %, apac
15 %, each side's latency with its own bursts of load). Policy: alpha 0.01, error rate at most
+1 point over the last-known-good's, P95 and P99 ratios at most x1.3 (decided once latency spans
10 minutes), mean score within 0.02 (a segment shown within x3, shown worse past x1).

Cases: an exact restore (the same version, the same behaviour); a rollback that left one region
different (a stale feature encoder: every apac score +0.05, or eu +0.05, or apac +0.03: half
again the threshold, within the segment margin). Targets: the exact
restore shown restored (first terminal GO) in >= 90 % of runs, with the traffic it took; a
rollback that left a region different never shown restored in >= 99 % of runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import share

from shadowdiff.cli.served_traffic import Version, served_records
from shadowdiff.diff.served import judge_served
from shadowdiff.replay.messages import FileRecord
from shadowdiff.replay.served import SERVED_KIND, ServedCodec
from shadowdiff.schemas.config import ServedRunConfig
from shadowdiff.schemas.policy import parse_policy

POLICY = parse_policy(
    {
        "inherit_defaults": False,
        "checks": [
            {"id": "error_rate", "kind": "error_rate", "threshold": 0.01},
            {"id": "latency_p95", "kind": "latency", "quantile": 0.95, "threshold": 1.3},
            {"id": "latency_p99", "kind": "latency", "quantile": 0.99, "threshold": 1.3},
            {"id": "score_shift", "kind": "score_shift", "threshold": 0.02},
        ],
    }
)
CASES: dict[str, Version] = {
    "exact restore": Version("v6"),
    "apac left different (scores +0.05)": Version("v6", in_segment={"region=apac": Version("v6", score_shift=0.05)}),
    "eu left different (scores +0.05)": Version("v6", in_segment={"region=eu": Version("v6", score_shift=0.05)}),
    "apac left slightly different (scores +0.03)": Version("v6", in_segment={"region=apac": Version("v6", score_shift=0.03)}),
}
LKG_MINUTES = 40
RATE_PER_S = 50.0


def run_once(args: tuple[str, int, float, float]) -> dict[str, Any]:
    name, seed, minutes, look_minutes = args
    from datetime import UTC, datetime

    t0 = datetime(2026, 12, 7, 10, tzinfo=UTC)
    lkg = t0 - timedelta(days=7)
    cfg = ServedRunConfig.model_validate(
        {
            "run": {"id": "rb"},
            "served": {"source": {"kind": "file", "path": "-"}},
            "compare": {
                "mode": "rollback",
                "reference": {
                    "version": "v6",
                    "start": lkg.isoformat(),
                    "end": (lkg + timedelta(minutes=LKG_MINUTES)).isoformat(),
                },
                "subject": {"version": "v6", "start": t0.isoformat()},
            },
            "segments": {"fields": ["region"]},
            "output": {"score_path": "score", "label_path": "label"},
        }
    )
    codec = ServedCodec(cfg)
    recs = [
        *served_records([(Version("v6"), 1.0)], LKG_MINUTES, RATE_PER_S, start=lkg, seed=seed * 2),
        *served_records([(CASES[name], 1.0)], minutes, RATE_PER_S, start=t0, seed=seed * 2 + 1),
    ]
    rows = [codec.decode_record("log", 0, FileRecord(i, None, orjson.dumps(r), 0)) for i, r in enumerate(recs)]
    con = duckdb.connect()
    con.execute("SET threads = 1")
    con.register("all_rows", SERVED_KIND.arrow(rows, t0))  # type: ignore[arg-type]
    con.execute("CREATE TABLE every_row AS SELECT * FROM all_rows")
    con.execute('CREATE TABLE dead_letters (source VARCHAR, part INTEGER, "offset" BIGINT, reason VARCHAR, detail VARCHAR)')
    con.execute("CREATE TABLE checkpoints (source VARCHAR, part INTEGER, next_offset BIGINT, consumed BIGINT, sampled BIGINT)")
    looks = int(minutes / look_minutes)
    for k in range(1, looks + 1):
        cutoff = t0 + timedelta(minutes=k * look_minutes)
        con.execute(
            f"CREATE OR REPLACE VIEW served AS SELECT * FROM every_row WHERE event_time < '{cutoff.isoformat()}'::TIMESTAMPTZ"
        )
        con.execute("CREATE OR REPLACE TEMP VIEW served_rows AS SELECT * FROM served")
        con.execute("CREATE OR REPLACE TEMP VIEW served_dead AS SELECT * FROM dead_letters")
        doc = judge_served(con, cfg, POLICY)
        if doc.verdict != "pending":
            return {
                "verdict": doc.verdict,
                "minutes": k * look_minutes,
                "records": doc.data.pairs,
                "failing": doc.failing_segments,
            }
    return {"verdict": "pending", "minutes": minutes, "records": 0, "failing": []}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=40)
    ap.add_argument("--look-minutes", type=float, default=4)
    ap.add_argument("--cases", default="", help="comma-separated names' starts (default: all)")
    a = ap.parse_args()
    with multiprocessing.Pool() as pool:
        for name in [n for n in CASES if not a.cases or any(n.startswith(c) for c in a.cases.split(","))]:
            out = pool.map(run_once, [(name, seed, a.minutes, a.look_minutes) for seed in range(a.runs)])
            go = [r for r in out if r["verdict"] == "go"]
            no_go = [r for r in out if r["verdict"] == "no_go"]
            decided = [r for r in out if r["verdict"] != "pending"]
            med = (
                f"median {statistics.median(r['minutes'] for r in decided):.0f} min, "
                f"{statistics.median(r['records'] for r in decided):,.0f} records since the rollback"
                if decided
                else "none decided"
            )
            failing = sorted({s for r in no_go for s in r["failing"]})
            print(
                f"{name:38s}: first terminal GO (restored) {share(len(go), a.runs)}, NO_GO {share(len(no_go), a.runs)} "
                f"(failing: {', '.join(failing) or '-'}); {med}",
                flush=True,
            )


if __name__ == "__main__":
    main()
