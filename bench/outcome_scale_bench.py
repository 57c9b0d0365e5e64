"""Outcomes at volume: N stored pairs (bench/synth.py's store: 20 segments x 15 features) with an
outcome for each of M requests, published as an outcome worker's export, judged with the
default checks plus outcome_error and outcome_brier; peak RSS and wall time, against the same
judge without outcomes in the same session. Then a look after 50k more outcomes, against the
full re-judge.

    python bench/outcome_scale_bench.py [--pairs 10000000] [--outcomes 10000000] [--new 50000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import peak_rss_mb
from synth import big_store

from shadowdiff.schemas.layout import RunLayout
from shadowdiff.schemas.sql import literal

_EMPTY_DEAD = """SELECT ''::VARCHAR AS source, 0::INTEGER AS part, 0::BIGINT AS "offset", ''::VARCHAR AS reason,
                 ''::VARCHAR AS detail, NULL::BLOB AS raw_key, NULL::BLOB AS raw_value, now()::TIMESTAMPTZ AS received_at
                 LIMIT 0"""


def publish_outcomes(home: Path, seq: int, first: int, count: int) -> None:
    """An outcome worker's export of `count` outcomes for the store's requests from `first` on
    (by offset), as replay/outcomes.py writes it."""
    import duckdb

    layout = RunLayout(home, "big")
    folder = layout.outcome_exports / "w0" / f"{seq:08d}"
    folder.mkdir(parents=True)
    con = duckdb.connect(config={"memory_limit": "2GB", "temp_directory": str(home / ".tmp")})
    con.execute(f"ATTACH {literal(str(layout.store('w0')))} AS s (READ_ONLY)")
    con.execute(
        f"""COPY (SELECT 'outcomes' AS source, 0::INTEGER AS part, "offset", request_id,
                         CASE WHEN hash(request_id) % 10 < 3 THEN '1' ELSE '0' END AS label, NULL::DOUBLE AS value,
                         event_time + INTERVAL 6 HOUR AS observed_at, now()::TIMESTAMPTZ AS received_at
                  FROM s.requests WHERE "offset" >= {first} AND "offset" < {first + count})
            TO {literal(str(folder / "outcomes.parquet"))} (FORMAT parquet)"""
    )
    con.execute(f"COPY ({_EMPTY_DEAD}) TO {literal(str(folder / 'dead_letters.parquet'))} (FORMAT parquet)")
    con.close()
    manifest = {"worker": "w0", "seq": seq, "created_at": "2026-12-07T00:00:00+00:00", "rowids": {}, "rows": {}}
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest | {"checkpoints": [], "run_meta": {"outcomes_complete": True}}))
    (folder.parent / "heartbeat.json").write_bytes(orjson.dumps({"worker": "w0", "final": True}))


def judge_child(home: Path, with_outcomes: bool) -> None:
    from shadowdiff.diff.judge import judge
    from shadowdiff.diff.load import open_run
    from shadowdiff.diff.outcomes import load_outcomes
    from shadowdiff.schemas.policy import parse_policy

    checks = [{"id": "accuracy", "kind": "outcome_error"}, {"id": "brier", "kind": "outcome_brier"}] if with_outcomes else []
    policy = parse_policy({"checks": checks})
    t0 = time.perf_counter()
    con = open_run(home, "big")
    if with_outcomes:
        load_outcomes(con, RunLayout(home, "big"))
    t1 = time.perf_counter()
    doc = judge(con, policy)
    con.close()
    wall = time.perf_counter() - t0
    o = doc.outcomes
    joined = f", {o.with_outcome:,} pairs with an outcome of {o.records:,} records" if o is not None else ""
    print(
        f"judge{' with outcomes' if with_outcomes else ''}: {wall:.1f} s wall (reading outcomes {t1 - t0:.1f} s), "
        f"peak RSS {peak_rss_mb():,.0f} MB{joined}"
    )


def timed_child(home: Path, with_outcomes: bool) -> float:
    cmd = [sys.executable, __file__, "--judge-child", str(home)] + (["--with-outcomes"] if with_outcomes else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    print("  " + out.stdout.strip(), flush=True)
    return float(out.stdout.split(": ", 1)[1].split(" s wall", 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=10_000_000)
    ap.add_argument("--outcomes", type=int, default=10_000_000)
    ap.add_argument("--new", type=int, default=50_000)
    ap.add_argument("--judge-child")
    ap.add_argument("--with-outcomes", action="store_true")
    args = ap.parse_args()
    if args.judge_child:
        judge_child(Path(args.judge_child), args.with_outcomes)
        return
    home = Path(tempfile.mkdtemp(prefix="shadowdiff-outcome-bench-"))
    try:
        t0 = time.perf_counter()
        big_store(home / "big" / "store-w0.duckdb", args.pairs, segments=20, features=15)
        first = min(args.outcomes, args.pairs - args.new)
        publish_outcomes(home, 1, 0, first)
        print(f"generated {args.pairs:,} pairs and {first:,} outcomes in {time.perf_counter() - t0:.1f} s", flush=True)
        plain = timed_child(home, False)
        full = timed_child(home, True)
        publish_outcomes(home, 2, first, args.new)
        look = timed_child(home, True)
        print(f"outcomes add {full / plain:.2f}x to the judge's time; a look after {args.new:,} new outcomes: {look:.1f} s")
        print(
            f"  (outcomes are read and joined whole at every look: the look costs {look / full:.0%} of a full re-judge; "
            "issue target <= 5 %)"
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
