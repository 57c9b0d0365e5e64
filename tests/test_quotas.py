"""Quotas are random samples of their segment: a quota of k keeps the k requests of its segment
with the smallest sampling hashes over the whole window, not its first k. On a recording whose
rare segment regresses only in its second half, the quota's samples span the window and the
regression is caught; a replay stopped half-way and resumed keeps the same samples."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from pathlib import Path

import duckdb
from helpers import T0, jsonl, judged_document, write_config

from shadowdiff.diff.load import open_run
from shadowdiff.replay.job import run_replay
from shadowdiff.schemas.config import load_config
from shadowdiff.schemas.policy import Policy

N = 40_000
K = 600


def recording(tmp: Path) -> Path:
    rng = random.Random(8)
    rows = []
    for i in range(N):
        x = rng.gauss(0, 1)
        daypart = "night" if rng.random() < 0.05 else "day"
        rows.append(
            {
                "request_id": f"req-{i}",
                "event_time": (T0 + timedelta(seconds=i * 20)).isoformat(),
                "segments": {"daypart": daypart},
                "input": {"x": x, "i": i, "half": N // 2, "daypart": daypart},
                "output": {"score": 1 / (1 + math.exp(-x))},
                "latency_ms": 5.0,
            }
        )
    return jsonl(tmp / "t.jsonl", rows)


def config(tmp: Path, run: str, path: Path) -> Path:
    return write_config(
        tmp / f"{run}.toml",
        f"""
[run]
id = "{run}"
home = "{tmp / "runs"}"
batch_size = 1000
[source]
kind = "file"
path = "{path}"
[segments]
fields = ["daypart"]
[sampling]
rate = 0.02
quotas = {{ "daypart=night" = {K} }}
[output]
score_path = "score"
threshold = 0.5
[[candidates]]
name = "v2"
kind = "python"
target = "models_for_tests:regresses_at_night_later"
""",
    )


def night_pairs(tmp: Path, run: str) -> list[int]:
    """The request numbers of the night pairs the judge uses."""
    con = open_run(tmp / "runs", run)
    try:
        doc = judged_document(con, Policy(min_samples=200))
        rows = con.execute("SELECT request_id FROM pairs WHERE seg_daypart = 'night'").fetchall()
    finally:
        con.close()
    night = next(c for c in doc["checks"] if c["check"] == "label_flip" and c["segment"] == "daypart=night")
    assert night["status"] == "fail", night  # the regression of the second half is caught
    assert "daypart=night" in doc["failing_segments"]
    return sorted(int(r.removeprefix("req-")) for (r,) in rows)


def test_a_quota_samples_its_whole_segment_and_catches_a_late_regression(tmp_path):
    path = recording(tmp_path)
    run_replay(load_config(config(tmp_path, "whole", path)))
    kept = night_pairs(tmp_path, "whole")
    assert len(kept) == K  # rate samples and the bottom-k quota samples: k in all
    late = sum(i >= N // 2 for i in kept) / len(kept)
    assert 0.4 < late < 0.6, late  # spread over the window, as the night traffic is
    with duckdb.connect(str(tmp_path / "runs" / "whole" / "store-w0.duckdb"), read_only=True) as con:
        (stored,) = con.execute("SELECT count(*) FROM requests WHERE sampled_reason = 'quota'").fetchone()
    # requests stored while among the k smallest so far, pushed out later: about k ln(n/k) more
    assert K < stored < 4 * K

    # stopped after a few batches, then resumed: the bottom-k continues where it was
    cfg = load_config(config(tmp_path, "resumed", path))
    run_replay(cfg, max_batches=5)
    run_replay(cfg)
    assert night_pairs(tmp_path, "resumed") == kept
