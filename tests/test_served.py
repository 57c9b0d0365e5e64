"""Canary analysis and rollback verification over served traffic (inference logs): the record
codec and its dead letters, exactly-once storage, the unpaired decisions (sound, slower, more
errors, one segment broken, no traffic on a side or in a segment), rollback restored or not,
the traffic mix, the gate's answer, and a re-judge from exports equal to the worker's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from shadowdiff.cli.served_traffic import Version, served_records
from shadowdiff.cli.wiring import served_judge_hook, start_served_run
from shadowdiff.diff.served import judge_served
from shadowdiff.diff.served_evidence import load_served
from shadowdiff.replay.messages import FileRecord
from shadowdiff.replay.served import ServedCodec, run_served
from shadowdiff.reports.verdicts import VerdictStore
from shadowdiff.schemas.config import ServedRunConfig
from shadowdiff.schemas.layout import RunLayout
from shadowdiff.schemas.policy import parse_policy
from shadowdiff.schemas.records import DeadLetter
from shadowdiff.schemas.served import ServedRow

T0 = datetime(2026, 12, 7, 10, tzinfo=UTC)
POLICY = parse_policy(
    {
        "checks": [
            {"id": "latency_p99", "kind": "latency", "quantile": 0.99, "for_minutes": 5},
            {"id": "error_rate", "kind": "error_rate", "threshold": 0.01, "for_minutes": 3},
        ]
    }
)


def write_log(path: Path, records: Any) -> Path:
    with path.open("wb") as fh:
        for r in records:
            fh.write(orjson.dumps(r) + b"\n")
    return path


def config(tmp_path: Path, log: Path, compare: dict[str, Any], run_id: str = "c1") -> ServedRunConfig:
    return ServedRunConfig.model_validate(
        {
            "run": {"id": run_id, "home": str(tmp_path / "runs")},
            "served": {"source": {"kind": "file", "path": str(log)}},
            "compare": compare,
            "segments": {"fields": ["region"]},
            "features": {"numeric": ["tenure"], "categorical": ["plan"]},
            "output": {"score_path": "score", "label_path": "label"},
        }
    )


CANARY = {"mode": "canary", "reference": {"version": "v6"}, "subject": {"version": "v7"}}


def canary_verdict(tmp_path: Path, canary: Version, minutes: float = 20, weight: float = 0.2, seed: int = 1, **kw: Any) -> Any:
    log = write_log(
        tmp_path / "log.jsonl", served_records([(Version("v6"), 1 - weight), (canary, weight)], minutes, seed=seed, **kw)
    )
    cfg = config(tmp_path, log, CANARY)
    policy = start_served_run(cfg, POLICY)
    run_served(cfg, after_checkpoint=served_judge_hook(cfg, policy))
    return VerdictStore(cfg.run.home, refresh_s=0).answer(cfg.run.id)[1]


# --- the record codec ------------------------------------------------------------------------


def _codec(tmp_path: Path, **served: Any) -> ServedCodec:
    cfg = ServedRunConfig.model_validate(
        {
            "run": {"id": "c"},
            "served": {"source": {"kind": "file", "path": str(tmp_path / "x")}, **served},
            "compare": CANARY,
            "segments": {"fields": ["region"], "allowed": {"region": ["eu", "us"]}},
            "output": {"score_path": "score"},
        }
    )
    return ServedCodec(cfg)


GOOD = {"model_version": "v7", "status": "ok", "latency_ms": 12.5, "segments": {"region": "eu"}, "output": {"score": 0.3}}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (None, "malformed_json"),
        (orjson.dumps({**GOOD, "model_version": None}), "missing_field"),
        (orjson.dumps({**GOOD, "model_version": ["v7"]}), "wrong_type"),
        (orjson.dumps({**GOOD, "status": None}), "missing_field"),
        (orjson.dumps({**GOOD, "latency_ms": -3}), "out_of_range"),
        (orjson.dumps({**GOOD, "latency_ms": "fast"}), "out_of_range"),
        (orjson.dumps({**GOOD, "segments": {"region": "mars"}}), "unknown_segment"),
        (orjson.dumps({**GOOD, "segments": "eu"}), "wrong_type"),
        (orjson.dumps({**GOOD, "event_time": "yesterday"}), "wrong_type"),
    ],
)
def test_a_record_that_cannot_be_read_is_a_dead_letter_with_its_reason(tmp_path: Path, value: bytes | None, reason: str) -> None:
    out = _codec(tmp_path).decode_record("t", 0, FileRecord(5, b"k", value, 1_700_000_000_000))
    assert isinstance(out, DeadLetter)
    assert (out.reason, out.offset, out.raw_key) == (reason, 5, b"k")


def test_a_good_record_reads_every_field_and_the_version_may_come_from_a_header(tmp_path: Path) -> None:
    row = _codec(tmp_path).decode_record("t", 0, FileRecord(1, None, orjson.dumps(GOOD), 1_700_000_000_000))
    assert isinstance(row, ServedRow)
    assert (row.version, row.latency_ms, row.ok, row.score, orjson.loads(row.segments)) == (
        "v7",
        12.5,
        True,
        0.3,
        {"region": "eu"},
    )
    assert row.event_us == 1_700_000_000_000_000  # no event time: the message's timestamp
    failed = _codec(tmp_path).decode_record("t", 0, FileRecord(2, None, orjson.dumps({**GOOD, "status": "timeout"}), 0))
    assert isinstance(failed, ServedRow)
    assert not failed.ok
    assert failed.score is None
    by_header = _codec(tmp_path, version="header:x-model-version")
    rec = FileRecord(3, None, orjson.dumps({**GOOD, "model_version": "ignored"}), 0, (("x-model-version", b"v8"),))
    row = by_header.decode_record("t", 0, rec)
    assert isinstance(row, ServedRow)
    assert row.version == "v8"
    missing = by_header.decode_record("t", 0, FileRecord(4, None, orjson.dumps(GOOD), 0))
    assert isinstance(missing, DeadLetter)
    assert missing.reason == "missing_field"


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from pydantic import ValidationError

    base = {"run": {"id": "c"}, "served": {"source": {"kind": "file", "path": "x"}}}
    with pytest.raises(ValidationError, match="same"):
        ServedRunConfig.model_validate(
            {**base, "compare": {"mode": "canary", "reference": {"version": "a"}, "subject": {"version": "a"}}}
        )
    with pytest.raises(ValidationError, match="last-known-good"):
        ServedRunConfig.model_validate(
            {**base, "compare": {"mode": "rollback", "reference": {"version": "a"}, "subject": {"version": "a"}}}
        )
    with pytest.raises(ValidationError, match="timezone"):
        ServedRunConfig.model_validate(
            {
                **base,
                "compare": {
                    "mode": "canary",
                    "reference": {"version": "a", "start": "2026-12-07T10:00:00"},
                    "subject": {"version": "b"},
                },
            }
        )


# --- storage ---------------------------------------------------------------------------------


def test_every_record_is_stored_once_across_a_restart_and_a_re_read(tmp_path: Path) -> None:
    recs = list(served_records([(Version("v6"), 0.8), (Version("v7"), 0.2)], 2, seed=3))
    log = tmp_path / "log.jsonl"
    with log.open("wb") as fh:
        for i, r in enumerate(recs):
            fh.write(b"{broken\n" if i % 500 == 7 else orjson.dumps(r) + b"\n")
    cfg = config(tmp_path, log, CANARY).model_copy()
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"batch_size": 1000})})
    first = run_served(cfg, max_batches=3)  # stopped part way: a restart resumes from its checkpoints
    assert not first.complete
    assert first.consumed == 3000
    second = run_served(cfg)
    assert second.complete
    layout = RunLayout(cfg.run.home, cfg.run.id)
    con = duckdb.connect()
    load_served(con, layout)
    (stored,) = con.execute("SELECT count(*) FROM served_rows").fetchone() or (0,)
    (dead,) = con.execute("SELECT count(*) FROM served_dead").fetchone() or (0,)
    bad = sum(1 for i in range(len(recs)) if i % 500 == 7)
    assert (stored, dead) == (len(recs) - bad, bad)
    # a third read of the whole file (its checkpoints lost) adds nothing
    with duckdb.connect(str(layout.served_store("w0"))) as w:
        w.execute("DELETE FROM checkpoints")
    run_served(cfg)
    with duckdb.connect(str(layout.served_store("w0")), read_only=True) as w:
        assert w.execute("SELECT count(*) FROM served").fetchone() == (len(recs) - bad,)


# --- canary decisions ------------------------------------------------------------------------


def test_a_sound_canary_is_go_and_its_verdict_says_it_is_unpaired(tmp_path: Path) -> None:
    doc = canary_verdict(tmp_path, Version("v7"))
    assert doc.verdict == "go", doc.reasons
    assert doc.served.mode == "canary"
    assert doc.served.subject.version == "v7"
    assert doc.served.reference.name == "stable"
    assert "label_flip" in doc.served.not_applicable
    assert "unpaired" in (doc.statistics.note or "")
    assert doc.terminal is not None


@pytest.mark.parametrize(
    ("canary", "check"),
    [
        (Version("v7", latency_factor=1.4), "latency_p95"),
        (Version("v7", error_rate=0.04), "error_rate"),
        (Version("v7", log_sd_factor=1.6), "latency_p99"),
    ],
)
def test_a_bad_canary_is_no_go_naming_its_check(tmp_path: Path, canary: Version, check: str) -> None:
    # latency is read per stretch of wall-clock time: bursts of load make time, not records, decide it
    doc = canary_verdict(tmp_path, canary, minutes=45)
    assert doc.verdict == "no_go", doc.reasons
    assert any(r.check == check and r.status == "fail" for r in doc.checks), doc.reasons


def test_a_regression_in_one_segment_is_no_go_naming_that_segment(tmp_path: Path) -> None:
    broken = Version("v7", in_segment={"region=apac": Version("v7", score_shift=0.1)})  # +0.015 overall: within
    doc = canary_verdict(tmp_path, broken, minutes=25)
    assert doc.verdict == "no_go", doc.reasons
    assert "region=apac" in doc.failing_segments
    assert "all" not in doc.failing_segments


def test_a_canary_without_traffic_in_a_segment_is_pending_with_that_reason(tmp_path: Path) -> None:
    # the traffic split sends no apac request to the canary: its apac answers are unknown
    records = [
        r
        for r in served_records([(Version("v6"), 0.8), (Version("v7"), 0.2)], 20, seed=4)
        if not (r["model_version"] == "v7" and r["segments"]["region"] == "apac")
    ]
    cfg = config(tmp_path, write_log(tmp_path / "log.jsonl", records), CANARY)
    policy = start_served_run(cfg, POLICY)
    run_served(cfg, after_checkpoint=served_judge_hook(cfg, policy))
    answer, doc = VerdictStore(cfg.run.home, refresh_s=0).answer(cfg.run.id)
    assert answer.verdict == "pending", doc.reasons
    assert any("region=apac: no traffic: the canary has 0" in r for r in answer.reasons), answer.reasons


def test_a_stable_side_without_data_is_pending_never_go(tmp_path: Path) -> None:
    records = list(served_records([(Version("v7"), 1.0)], 12, seed=5))
    cfg = config(tmp_path, write_log(tmp_path / "log.jsonl", records), CANARY)
    policy = start_served_run(cfg, POLICY)
    run_served(cfg, after_checkpoint=served_judge_hook(cfg, policy))
    answer, _ = VerdictStore(cfg.run.home, refresh_s=0).answer(cfg.run.id)
    assert answer.verdict == "pending"
    assert any("the stable side (version v6) has no records" in r for r in answer.reasons), answer.reasons


def test_a_judge_of_the_exports_equals_a_judge_of_the_store(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "log.jsonl", served_records([(Version("v6"), 0.7), (Version("v7", latency_factor=1.2), 0.3)], 12, seed=8)
    )
    cfg = config(tmp_path, log, CANARY)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"batch_size": 5000})})
    run_served(cfg, checkpoint_every_s=0)  # an export after every batch: many folders to merge
    layout = RunLayout(cfg.run.home, cfg.run.id)
    assert len(layout.served_export_folders()) > 5
    with duckdb.connect(str(layout.served_store("w0")), read_only=True) as store:
        load_served(store, None)
        own = judge_served(store, cfg, POLICY)
    con = duckdb.connect()
    from_exports = judge_served(con, cfg, POLICY, load_served(con, layout))
    assert [(c.check, c.segment, c.status, c.value) for c in from_exports.checks] == [
        (c.check, c.segment, c.status, c.value) for c in own.checks
    ]
    assert from_exports.data.pairs == own.data.pairs > 0


# --- rollback verification -------------------------------------------------------------------


def _rollback(tmp_path: Path, current: Version, region_share: tuple[float, ...] | None = None, seed: int = 7) -> Any:
    lkg_start = T0 - timedelta(days=7)
    before = served_records([(Version("v6"), 1.0)], 20, start=lkg_start, seed=seed)
    after = served_records(
        [(current, 1.0)], 20, start=T0, seed=seed + 1, **({"region_share": region_share} if region_share else {})
    )
    log = write_log(tmp_path / "log.jsonl", [*before, *after])
    compare = {
        "mode": "rollback",
        "reference": {"version": "v6", "start": lkg_start.isoformat(), "end": (lkg_start + timedelta(minutes=20)).isoformat()},
        "subject": {"version": "v6", "start": T0.isoformat()},
    }
    cfg = config(tmp_path, log, compare, run_id="rb")
    policy = start_served_run(cfg, POLICY)
    run_served(cfg, after_checkpoint=served_judge_hook(cfg, policy))
    return VerdictStore(cfg.run.home, refresh_s=0).answer(cfg.run.id)[1]


def test_an_exact_restore_is_shown_restored(tmp_path: Path) -> None:
    doc = _rollback(tmp_path, Version("v6"))
    assert doc.verdict == "go", doc.reasons
    assert doc.served.restored is True
    assert doc.reasons[0].startswith("restored")
    assert doc.candidate == "restored-v6"
    assert doc.served.reference.name == "last-known-good"


def test_a_rollback_that_left_one_region_different_is_not_restored_and_names_it(tmp_path: Path) -> None:
    stale = Version("v6", in_segment={"region=eu": Version("v6", score_shift=0.08)})
    doc = _rollback(tmp_path, stale)
    assert doc.verdict == "no_go", doc.reasons
    assert doc.served.restored is False
    assert doc.reasons[0].startswith("not restored")
    assert "region=eu" in doc.failing_segments


def test_a_segment_whose_share_moved_is_reported_as_traffic_not_blamed_on_the_model(tmp_path: Path) -> None:
    doc = _rollback(tmp_path, Version("v6"), region_share=(0.25, 0.45, 0.30))
    moved = {m.segment for m in doc.served.traffic_mix if m.moved}
    assert moved == {"region=eu", "region=apac"}
    assert doc.verdict == "go", doc.reasons
    assert any("share of the traffic moved" in r for r in doc.reasons)


def test_the_served_judge_is_deterministic(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.jsonl", served_records([(Version("v6"), 0.7), (Version("v7"), 0.3)], 12, seed=9))
    cfg = config(tmp_path, log, CANARY)
    run_served(cfg)
    digests = set()
    for _ in range(2):
        con = duckdb.connect()
        digests.add(judge_served(con, cfg, POLICY, load_served(con, RunLayout(cfg.run.home, cfg.run.id))).digest)
    assert len(digests) == 1


def test_the_report_of_a_served_run_escapes_what_came_from_traffic(tmp_path: Path) -> None:
    from shadowdiff.reports.html import write_report

    hostile = "<img src=x onerror=alert(1)>"
    records = []
    for r in served_records([(Version("v6"), 0.7), (Version("v7"), 0.3)], 6, seed=11):
        if r["segments"]["region"] == "apac":
            r["segments"]["region"] = hostile
        records.append(r)
    cfg = config(tmp_path, write_log(tmp_path / "log.jsonl", records), CANARY)
    policy = start_served_run(cfg, POLICY)
    run_served(cfg, after_checkpoint=served_judge_hook(cfg, policy))
    doc = VerdictStore(cfg.run.home, refresh_s=0).answer(cfg.run.id)[1]
    assert any(s.segment == f"region={hostile}" for s in doc.segments)
    html = write_report(cfg.run.home, doc, tmp_path / "report.html").read_text(encoding="utf-8")
    assert hostile not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert 'id="served"' in html
    assert 'id="traffic-mix"' in html


def test_two_workers_share_a_run_through_s3_and_a_judge_elsewhere_reads_both(tmp_path: Path, s3_endpoint: str) -> None:
    import boto3

    from shadowdiff.cli.commands import judge_served_run
    from shadowdiff.cli.wiring import served_config
    from shadowdiff.replay.objectstore import SharedRun
    from shadowdiff.schemas.config import SharedSpec

    bucket = "served-runs"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    shared = {"url": f"s3://{bucket}/canary", "endpoint_url": s3_endpoint}
    counts = []
    for worker, seed in (("w0", 21), ("w1", 22)):  # each worker read its own partitions' records
        records = list(served_records([(Version("v6"), 0.7), (Version("v7"), 0.3)], 8, seed=seed))
        counts.append(len(records))
        cfg = config(tmp_path / worker, write_log(tmp_path / f"{worker}.jsonl", records), CANARY, run_id="shared")
        cfg = cfg.model_copy(
            update={"run": cfg.run.model_copy(update={"worker": worker, "shared": SharedSpec.model_validate(shared)})}
        )
        start_served_run(cfg, POLICY)
        run_served(cfg)
    judge_home = tmp_path / "judge"
    spec = SharedSpec.model_validate(shared)
    SharedRun(spec, "shared").pull(RunLayout(judge_home, "shared"))
    assert {p.parent.name for p in RunLayout(judge_home, "shared").served_export_folders()} == {"w0", "w1"}
    cfg_there = served_config(judge_home, "shared")
    assert cfg_there is not None
    assert cfg_there.run.home == judge_home
    (doc,) = judge_served_run(cfg_there, POLICY, None, watch=False, every_s=1)
    assert doc.data.consumed == sum(
        counts
    )  # both workers' records read (a few stable ones outside the canary's span are not compared)
    assert {o.source for o in doc.data.offsets} == {str(tmp_path / "w0.jsonl"), str(tmp_path / "w1.jsonl")}
    assert RunLayout(judge_home, "shared").verdict(doc.candidate).exists()


def test_a_canary_is_compared_with_the_stables_traffic_over_the_same_time(tmp_path: Path) -> None:
    # the topic holds an hour of the stable alone before the canary started: that hour is not compared
    before = list(served_records([(Version("v6"), 1.0)], 10, start=T0 - timedelta(minutes=10), seed=31))
    during = list(served_records([(Version("v6"), 0.8), (Version("v7"), 0.2)], 10, start=T0, seed=32))
    cfg = config(tmp_path, write_log(tmp_path / "log.jsonl", [*before, *during]), CANARY)
    run_served(cfg)
    con = duckdb.connect()
    doc = judge_served(con, cfg, POLICY, load_served(con, RunLayout(cfg.run.home, cfg.run.id)))
    first_canary = min(r["event_time"] for r in during if r["model_version"] == "v7")
    last_canary = max(r["event_time"] for r in during if r["model_version"] == "v7")
    stable_during = sum(1 for r in during if r["model_version"] == "v6" and first_canary <= r["event_time"] <= last_canary)
    assert doc.served is not None
    assert doc.served.reference.records == stable_during
    assert doc.served.subject.records == sum(1 for r in during if r["model_version"] == "v7")


def test_a_judge_of_the_exports_names_a_silent_worker(tmp_path: Path) -> None:
    import os
    import time

    from shadowdiff.cli.wiring import judge_served_and_publish

    log = write_log(tmp_path / "log.jsonl", served_records([(Version("v6"), 0.7), (Version("v7"), 0.3)], 4, seed=41))
    cfg = config(tmp_path, log, CANARY)
    run_served(cfg, max_batches=2)
    beat = RunLayout(cfg.run.home, cfg.run.id).served_exports / "w0" / "heartbeat.json"
    old = time.time() - 3600
    data = orjson.loads(beat.read_bytes())
    data["at"], data["final"] = datetime.fromtimestamp(old, UTC).isoformat(), False  # as a worker killed an hour ago left it
    beat.write_bytes(orjson.dumps(data))
    os.utime(beat, (old, old))
    doc = judge_served_and_publish(duckdb.connect(), cfg, POLICY, from_exports=True, label="look")
    assert doc.coverage is not None
    assert doc.coverage.silent_workers == ["w0"]
    assert any(r.startswith("worker w0 has not reported for") for r in doc.reasons)


def test_the_producers_records_follow_the_documented_schema() -> None:
    import jsonschema

    from shadowdiff.replay.served_log import served_record
    from shadowdiff.schemas import SERVED_RECORD_SCHEMA_VERSION, served_record_schema

    schema = served_record_schema()
    assert schema["title"].endswith(f"version {SERVED_RECORD_SCHEMA_VERSION}")
    record = served_record("r-1", "churn-v7", {"tenure": 3}, {"score": 0.4}, 12.5, segments={"region": "eu"})
    jsonschema.validate(record, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in record.items() if k != "model_version"}, schema)
