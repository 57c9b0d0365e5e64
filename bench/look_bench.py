"""What one look of `shadowdiff judge --watch` costs against a full re-judge, on a run of
exports: N stored pairs published in `--exports` folders, then one more folder of `--new` pairs.

- full: open_exports (every export read again) + judge;
- look: open_cache (the judge's cache reads the new folder only) + judge (the pairs the cache
  kept from the look before are brought up to date from the new rows).

Prints both, their parts and the ratio look / full (targets: <= 0.05 with 5M pairs stored and
50k new; <= 0.01 with 50M stored and 50k new). Both verdicts must have the same digest. The
ratio is within one run, on this machine.

    python bench/look_bench.py [--pairs 5000000] [--new 50000] [--exports 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synth import big_store

from shadowdiff.diff.exports import open_cache, open_exports
from shadowdiff.diff.judge import judge
from shadowdiff.schemas.layout import EXPORT_TABLES, RunLayout
from shadowdiff.schemas.policy import Policy, Reference
from shadowdiff.schemas.verdict import Verdict


def publish(store: Path, layout: RunLayout, seq: int, lo: int, hi: int) -> None:
    """Rows with offsets in [lo, hi) as export folder `seq` of worker w0 (manifest last)."""
    folder = layout.worker_exports("w0") / f"{seq:08d}"
    folder.mkdir(parents=True)
    with duckdb.connect(str(store), read_only=True) as con:
        for t in EXPORT_TABLES:
            target = folder / f"{t}.parquet"
            con.execute(f"""COPY (SELECT * FROM {t} WHERE "offset" >= {lo} AND "offset" < {hi}) TO '{target}'
                            (FORMAT parquet, COMPRESSION zstd)""")
        checkpoints = [
            {"source": s, "part": p, "next_offset": o, "consumed": c, "sampled": n}
            for s, p, o, c, n in con.execute("SELECT source, part, next_offset, consumed, sampled FROM checkpoints").fetchall()
        ]
        meta = {k: orjson.loads(v) for k, v in con.execute("SELECT key, value FROM run_meta").fetchall()}
    manifest = {"worker": "w0", "seq": seq, "created_at": f"2026-12-01T00:00:00.{seq:06d}+00:00", "checkpoints": checkpoints}
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest | {"run_meta": meta}, default=str))


PHASES: dict[str, float] = {}


def time_phases() -> None:
    """Add each part of a judge's time into PHASES (the parts the judge calls by name)."""
    import shadowdiff.diff.aggregate as agg
    import shadowdiff.diff.judge as judge_module
    import shadowdiff.diff.signed as signed

    def wrap(module: Any, name: str) -> None:
        inner = getattr(module, name)

        def timed_part(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                PHASES[name] = PHASES.get(name, 0.0) + time.perf_counter() - t0

        setattr(module, name, timed_part)

    for name in ("pair_stats", "per_window", "latency_blocks"):
        wrap(agg, name)
    for name in ("score_distributions", "label_counts"):
        wrap(signed, name)
    judged = ("build_pairs", "compare_outputs", "feature_checks", "run_level_checks", "data_section", "examples")
    for name in (*judged, "offered_load"):
        wrap(judge_module, name)


def phases() -> str:
    out = ", ".join(f"{k} {v:.1f}" for k, v in sorted(PHASES.items(), key=lambda kv: -kv[1]))
    PHASES.clear()
    return out


def timed(open_run: Callable[[], duckdb.DuckDBPyConnection], policy: Policy) -> tuple[float, float, Verdict]:
    """Seconds to open the run, seconds to judge it, and the verdict."""
    t0 = time.perf_counter()
    con = open_run()
    t1 = time.perf_counter()
    try:
        doc = judge(con, policy)
    finally:
        con.close()
    return t1 - t0, time.perf_counter() - t1, doc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5_000_000)
    ap.add_argument("--new", type=int, default=50_000)
    ap.add_argument("--exports", type=int, default=100)
    ap.add_argument("--memory", default="2GB", help="DuckDB memory limit of both (the judge's default: 2GB)")
    ap.add_argument("--phases", action="store_true", help="print the seconds each part of a judge took")
    a = ap.parse_args()
    if a.phases:
        time_phases()
    policy = Policy(reference=Reference(start="2026-11-25T00:00:00+00:00", end="2026-11-25T04:00:00+00:00"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        total = a.pairs + a.new
        store = big_store(tmp / "src" / "store-w0.duckdb", total, segments=20, features=15, run_id="big")
        layout = RunLayout(tmp / "runs", "big")
        for i in range(a.exports):
            publish(store, layout, i + 1, a.pairs * i // a.exports, a.pairs * (i + 1) // a.exports)
        publish(store, layout, a.exports + 1, a.pairs, total)
        # the new folder waits aside until the first look is done; the source store goes, so
        # that a run of 50M pairs (store, exports, cache and a full re-judge's temporary
        # files) fits the disk
        newest = layout.worker_exports("w0") / f"{a.exports + 1:08d}"
        aside = tmp / newest.name
        newest.rename(aside)
        store.unlink()
        # the watch's earlier looks: the cache has read every export and kept the pairs
        first_read, first_judge, _ = timed(lambda: open_cache(layout.home, "big", a.memory), policy)
        print(f"{a.pairs:,} pairs in {a.exports} exports; the first look: read {first_read:.1f} s + judge {first_judge:.1f} s")
        aside.rename(newest)

        PHASES.clear()
        look_read, look_judge, looked = timed(lambda: open_cache(layout.home, "big", a.memory), policy)
        look_phases = phases()
        full_read, full_judge, full = timed(lambda: open_exports(layout.home, "big", a.memory), policy)
        full_phases = phases()

    look, whole = look_read + look_judge, full_read + full_judge
    print(f"look with {a.new:,} new pairs: read {look_read:.1f} s + judge {look_judge:.1f} s = {look:.1f} s")
    print(f"full re-judge:                read {full_read:.1f} s + judge {full_judge:.1f} s = {whole:.1f} s")
    if a.phases:
        print(f"look's judge, s: {look_phases}\nfull judge, s:   {full_phases}")
    print(f"look / full: {look / whole:.4f}  (reading alone: {look_read / full_read:.4f}; target <= 0.05 at 5M, <= 0.01 at 50M)")
    print(
        f"verdicts: {looked.verdict} / {full.verdict}, pairs {looked.data.pairs:,}, digest equal: {looked.digest == full.digest}"
    )


if __name__ == "__main__":
    main()
