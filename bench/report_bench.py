"""The report of a run with 1M pairs: render time and file size (targets <= 10 s, <= 10 MB).

python bench/report_bench.py [--pairs 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synth import big_store

from shadowdiff.diff.judge import judge
from shadowdiff.diff.load import open_run
from shadowdiff.reports.html import write_report
from shadowdiff.schemas.policy import Policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1_000_000)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="shadowdiff-report-bench-"))
    big_store(home / "big" / "store-w0.duckdb", args.pairs, segments=20, features=15, latency_factor=1.4)
    con = open_run(home, "big")
    t0 = time.perf_counter()
    doc = judge(con, Policy())
    con.close()
    t_judge = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = write_report(home, doc, home / "report.html", with_evidently=False)
    t_report = time.perf_counter() - t0
    t0 = time.perf_counter()
    out2 = write_report(home, doc, home / "report-ev.html", with_evidently=True)
    t_ev = time.perf_counter() - t0
    ev = out2.with_name(out2.stem + "-evidently.html")
    print(f"{args.pairs:,} pairs, verdict {doc.verdict} (judged in {t_judge:.1f} s)")
    print(f"report: rendered in {t_report:.2f} s, {out.stat().st_size / 1e6:.2f} MB (targets <= 10 s, <= 10 MB)")
    print(f"report + evidently drill-down page: {t_ev:.2f} s; drill-down page {ev.stat().st_size / 1e6:.1f} MB (separate file)")


if __name__ == "__main__":
    main()
