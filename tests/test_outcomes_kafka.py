"""Outcomes through a real Kafka topic while the outcome worker is SIGKILLed: produced before,
during and long after their pairs, with duplicates and unknown request ids, each counted once
and none lost."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import duckdb
import orjson
import pytest
from helpers import envelope, jsonl, outcome_run_config, produce
from replays import Replay

from shadowdiff.cli.wiring import judge_and_publish
from shadowdiff.diff.load import open_run
from shadowdiff.replay.job import run_replay
from shadowdiff.schemas.config import load_config
from shadowdiff.schemas.layout import RunLayout
from shadowdiff.schemas.policy import parse_policy

pytestmark = [pytest.mark.kafka]


def _exported(home: Path) -> int:
    """Outcome records the worker published (distinct coordinates over every export)."""
    files = sorted(RunLayout(home, "r").outcome_exports.glob("*/[0-9]*/outcomes.parquet"))
    if not files:
        return 0
    listed = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    with duckdb.connect() as con:
        (n,) = con.execute(f'SELECT count(DISTINCT (source, part, "offset")) FROM read_parquet({listed})').fetchone() or (0,)
    return int(n)


def test_each_outcome_counts_once_across_sigkills(tmp_path: Path, kafka_bootstrap: str, make_topic) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic(3)
    rng = random.Random(5)
    envs = [envelope(i, rng) for i in range(2000)]
    jsonl(tmp_path / "t.jsonl", envs)
    source = (
        f'kind = "kafka-live"\nbootstrap = "{kafka_bootstrap}"\ntopic = "{topic}"\ngroup = "outcomes-{topic}"\nprogress = false'
    )
    cfg_path = outcome_run_config(tmp_path, source, batch=250)
    cfg = load_config(cfg_path)
    home = tmp_path / "runs"

    def outcome(i: int, label: str | None = None) -> tuple[bytes, bytes]:
        rid = envs[i]["request_id"] if isinstance(i, int) and i < len(envs) else f"nobody-{i}"
        value = {"request_id": rid, "label": label or ("1" if envs[i % 2000]["input"]["x"] > 0 else "0")}
        value["observed_at"] = "2026-12-01T00:00:00Z"
        return rid.encode(), orjson.dumps(value)

    # the first 1,000 requests' pairs are stored; outcomes come for 1,500 (500 before their pairs)
    run_replay(cfg, max_batches=4)
    produce(kafka_bootstrap, topic, [outcome(i) for i in range(1500)])
    worker = Replay(args=["outcomes", "--config", str(cfg_path), "--export-every", "0.2"])
    worker.until(lambda: _exported(home) >= 300, 120, "some outcomes exported")
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(30)
    # while it is down: the rest, long after their pairs (the replay finishes first), each of
    # 100 delivered twice, and 30 ids no stored request has
    run_replay(cfg)
    later = [outcome(i) for i in range(1500, 2000)] + [outcome(i) for i in range(100)] + [outcome(5000 + i) for i in range(30)]
    produce(kafka_bootstrap, topic, later)
    total = 1500 + len(later)
    worker = Replay(args=["outcomes", "--config", str(cfg_path), "--export-every", "0.2"])
    worker.until(lambda: _exported(home) >= 1600, 120, "more outcomes exported")
    worker.proc.send_signal(signal.SIGKILL)  # killed again, mid-way
    worker.proc.wait(30)
    worker = Replay(args=["outcomes", "--config", str(cfg_path), "--export-every", "0.2"])
    worker.until(lambda: _exported(home) == total, 120, f"all {total} outcomes exported")
    worker.stop()
    with duckdb.connect(str(RunLayout(home, "r").outcome_store("w0")), read_only=True) as con:
        assert con.execute('SELECT count(*), count(DISTINCT (source, part, "offset")) FROM outcomes').fetchone() == (total, total)
        assert con.execute("SELECT sum(next_offset) FROM checkpoints").fetchone() == (total,)
    policy = parse_policy({"min_samples": 100, "checks": [{"id": "accuracy", "kind": "outcome_error"}]})
    con = open_run(home, "r")
    try:
        doc = judge_and_publish(con, home, "r", policy, final=True)[0].model_dump()
    finally:
        con.close()
    out = doc["outcomes"]
    assert (out["records"], out["with_outcome"], out["waiting"]) == (total, 2000, 0)
    assert (out["duplicates"], out["conflicting"], out["unknown_requests"]) == (100, 0, 30)
