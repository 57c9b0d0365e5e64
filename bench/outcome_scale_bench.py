"""Outcomes at volume: N stored pairs (bench/synth.py's store: 20 segments x 15 features) in
export folders, with an outcome for each of M requests published as an outcome worker's export,
judged with the default checks plus outcome_error and outcome_brier. Prints, in one session:
the full judge without outcome checks, the watch's first look (its cache reads every pair and
outcome), then after one more outcome export of `--new` outcomes a look (open_cache) and a full
re-judge (open_exports), their ratio (issue target <= 0.05), and whether both verdicts have the
same digest; the peak RSS of the process (target <= 4 GB).

    python bench/outcome_scale_bench.py [--pairs 10000000] [--outcomes 10000000] [--new 50000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from look_bench import publish
from measure import peak_rss_mb
from synth import big_store

from shadowdiff.schemas.layout import RunLayout
from shadowdiff.schemas.sql import literal

_EMPTY_DEAD = """SELECT ''::VARCHAR AS source, 0::INTEGER AS part, 0::BIGINT AS "offset", ''::VARCHAR AS reason,
                 ''::VARCHAR AS detail, NULL::BLOB AS raw_key, NULL::BLOB AS raw_value, now()::TIMESTAMPTZ AS received_at
                 LIMIT 0"""


def publish_outcomes(store: Path, layout: RunLayout, seq: int, first: int, count: int) -> None:
    """An outcome worker's export of `count` outcomes for the store's requests from `first` on
    (by offset), as replay/outcomes.py writes it."""
    import duckdb

    folder = layout.outcome_exports / "w0" / f"{seq:08d}"
    folder.mkdir(parents=True)
    con = duckdb.connect(config={"memory_limit": "2GB", "temp_directory": str(layout.dir / ".tmp")})
    con.execute(f"ATTACH {literal(str(store))} AS s (READ_ONLY)")
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


def timed(open_run: Callable[[], Any], layout: RunLayout, policy: Any) -> tuple[float, Any]:
    """Seconds to open the run, read its outcomes and judge it, and the verdict."""
    from shadowdiff.diff.judge import judge
    from shadowdiff.diff.outcomes import load_outcomes

    t0 = time.perf_counter()
    con = open_run()
    try:
        load_outcomes(con, layout)
        doc = judge(con, policy)
    finally:
        con.close()
    return time.perf_counter() - t0, doc


def main() -> None:
    from shadowdiff.diff.exports import open_cache, open_exports
    from shadowdiff.schemas.policy import parse_policy

    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=10_000_000)
    ap.add_argument("--outcomes", type=int, default=10_000_000)
    ap.add_argument("--new", type=int, default=50_000)
    ap.add_argument("--exports", type=int, default=20)
    a = ap.parse_args()
    checks = [{"id": "accuracy", "kind": "outcome_error"}, {"id": "brier", "kind": "outcome_brier"}]
    plain, with_outcomes = parse_policy({}), parse_policy({"checks": checks})
    home = Path(tempfile.mkdtemp(prefix="shadowdiff-outcome-bench-"))
    try:
        t0 = time.perf_counter()
        store = big_store(home / "src" / "store-w0.duckdb", a.pairs, segments=20, features=15, run_id="big")
        layout = RunLayout(home / "runs", "big")
        for i in range(a.exports):
            publish(store, layout, i + 1, a.pairs * i // a.exports, a.pairs * (i + 1) // a.exports)
        first = min(a.outcomes, a.pairs) - a.new
        publish_outcomes(store, layout, 1, 0, first)
        print(f"{a.pairs:,} pairs in {a.exports} exports and {first:,} outcomes, generated in {time.perf_counter() - t0:.1f} s")
        alone, _ = timed(lambda: open_exports(layout.home, "big"), layout, plain)
        print(f"  full judge without outcome checks: {alone:.1f} s", flush=True)
        # the watch's earlier looks: the cache has read every export and kept pairs and outcomes
        first_look, _ = timed(lambda: open_cache(layout.home, "big"), layout, with_outcomes)
        print(
            f"  the watch's first look (every pair and outcome): {first_look:.1f} s, peak RSS {peak_rss_mb():,.0f} MB", flush=True
        )
        publish_outcomes(store, layout, 2, first, a.new)
        look, looked = timed(lambda: open_cache(layout.home, "big"), layout, with_outcomes)
        full, whole = timed(lambda: open_exports(layout.home, "big"), layout, with_outcomes)
        print(f"  a look after {a.new:,} new outcomes: {look:.1f} s; full re-judge with outcomes: {full:.1f} s")
        print(f"outcome checks add {full / alone:.2f}x to a full judge; look / full re-judge: {look / full:.3f} (target <= 0.05)")
        print(
            f"verdicts {looked.verdict} / {whole.verdict}, {whole.outcomes.with_outcome:,} pairs with an outcome, "
            f"digest equal: {looked.digest == whole.digest}; peak RSS of this process {peak_rss_mb():,.0f} MB (target <= 4096 MB)"
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
