"""Recorded files as sources: JSONL and Parquet give the same stored requests, and a restart of
a file replay resumes after the stored checkpoint."""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from helpers import POISON_TIMES, envelope, file_config, jsonl

from shadowdiff.replay.job import run_replay
from shadowdiff.schemas.config import load_config


def config(tmp: Path, run: str, path: str) -> Path:
    return file_config(tmp, run, path, rate=0.5)


def stored(tmp: Path, run: str) -> list[tuple]:
    with duckdb.connect(str(tmp / "runs" / run / "store-w0.duckdb"), read_only=True) as con:
        return con.execute(
            "SELECT request_id, segments.region, features.x, features.plan FROM requests ORDER BY request_id"
        ).fetchall()


def test_jsonl_and_parquet_recordings_store_the_same_requests(tmp_path):
    rng = random.Random(4)
    envs = [envelope(i, rng) for i in range(800)]
    jsonl(tmp_path / "t.jsonl", envs)
    pq.write_table(pa.Table.from_pylist(envs), tmp_path / "t.parquet")
    run_replay(load_config(config(tmp_path, "j", "t.jsonl")))
    run_replay(load_config(config(tmp_path, "p", "t.parquet")))
    a, b = stored(tmp_path, "j"), stored(tmp_path, "p")
    assert 300 < len(a) < 500  # about half, by the request-id hash
    assert a == b


def test_a_file_replay_resumes_after_its_checkpoint(tmp_path):
    rng = random.Random(6)
    jsonl(tmp_path / "t.jsonl", [envelope(i, rng) for i in range(1000)])
    cfg = load_config(config(tmp_path, "r", "t.jsonl"))
    first = run_replay(cfg, max_batches=2)
    assert 0 < first.consumed < 1000
    second = run_replay(cfg)
    assert first.consumed + second.consumed == 1000
    rows = stored(tmp_path, "r")
    assert len(rows) == len({r[0] for r in rows})


def test_generated_traffic_follows_the_envelope_schema():
    import jsonschema

    from shadowdiff.cli.demo_traffic import generate
    from shadowdiff.schemas import envelope_schema

    validator = jsonschema.Draft202012Validator(envelope_schema())
    for env in generate(50, seed=1) + [envelope(i, random.Random(1)) for i in range(50)]:
        validator.validate(env)
    assert not validator.is_valid({"request_id": "r1"})  # no input


def test_batches_decoded_in_duckdb_are_cut_at_batch_size_and_resume_exactly(tmp_path):
    """Sampling by the record key takes the DuckDB path: every batch holds exactly batch_size
    requests (its memory follows the config), and a stop mid-file resumes without a gap or a
    duplicate."""
    rng = random.Random(8)
    jsonl(tmp_path / "t.jsonl", [envelope(i, rng) for i in range(1050)])
    cfg = load_config(config(tmp_path, "k", "t.jsonl"))
    cfg = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"rate": 1.0, "key": "kafka_key"})})
    first = run_replay(cfg, max_batches=3)
    assert (first.batches, first.sampled) == (3, 300)
    second = run_replay(cfg)
    assert second.sampled == 750
    assert second.batches == 8  # seven full batches and the last 50
    rows = stored(tmp_path, "k")
    assert sorted(r[0] for r in rows) == sorted(f"req-{i}" for i in range(1050))


def test_the_first_batches_ramp_up_to_batch_size(tmp_path):
    """The models get work after 1/16 of a batch is read; batches double up to batch_size."""
    rng = random.Random(10)
    jsonl(tmp_path / "t.jsonl", [envelope(i, rng) for i in range(12_000)])
    cfg = load_config(config(tmp_path, "u", "t.jsonl"))
    cfg = cfg.model_copy(
        update={
            "run": cfg.run.model_copy(update={"batch_size": 8000}),
            "sampling": cfg.sampling.model_copy(update={"rate": 1.0, "key": "kafka_key"}),
        }
    )
    assert run_replay(cfg, max_batches=1).sampled == 500  # 8000/16
    again = run_replay(cfg, max_batches=4)  # a restart ramps up again: 500, 1000, 2000, 4000
    assert again.sampled == 7500
    rest = run_replay(cfg)
    assert (rest.batches, rest.sampled) == (4, 4000)  # 500, 1000, 2000 and the last 500
    rows = stored(tmp_path, "u")
    assert sorted(r[0] for r in rows) == sorted(f"req-{i}" for i in range(12_000))


def test_the_duckdb_and_python_paths_store_the_same_rows(tmp_path):
    """The same recording replayed through the DuckDB batch decoder (key from the record) and
    through the Python decoder (key from the request id) stores the same requests and the same
    live baseline, missing outputs included."""
    rng = random.Random(9)
    envs = [envelope(i, rng) for i in range(300)]
    for env in envs[::7]:
        del env["output"]
    jsonl(tmp_path / "t.jsonl", [*envs, b"{broken", {"request_id": "x", "input": 3}])
    base = load_config(config(tmp_path, "a", "t.jsonl"))
    tables = {}
    for key in ("kafka_key", "request_id"):
        run = f"k-{key}"
        cfg = base.model_copy(
            update={
                "run": base.run.model_copy(update={"id": run}),
                "sampling": base.sampling.model_copy(update={"rate": 1.0, "key": key}),
            }
        )
        run_replay(cfg)
        with duckdb.connect(str(tmp_path / "runs" / run / "store-w0.duckdb"), read_only=True) as con:
            tables[key] = (
                con.execute(
                    """SELECT "offset", request_id, event_time, segments, features, model_input::JSON, feature_version
                       FROM requests ORDER BY "offset\""""
                ).fetchall(),
                con.execute(
                    """SELECT "offset", model_version, score, label, output::JSON, latency_ms, error_class, attempts
                       FROM outputs WHERE variant = 'baseline' ORDER BY "offset\""""
                ).fetchall(),
                con.execute('SELECT "offset", reason, detail FROM dead_letters ORDER BY "offset"').fetchall(),
            )
    assert len(tables["kafka_key"][0]) == 300
    assert tables["kafka_key"] == tables["request_id"]
    # the candidate's calls carry the wall-clock time they were made; the live baseline's
    # answers were made in production, at their event time, so they carry none
    with duckdb.connect(str(tmp_path / "runs" / "k-kafka_key" / "store-w0.duckdb"), read_only=True) as con:
        timed = dict(con.execute("SELECT variant, count(called_at) FROM outputs GROUP BY 1").fetchall())
        (recent,) = con.execute("SELECT min(called_at) > now() - INTERVAL 1 HOUR FROM outputs").fetchone()  # type: ignore[misc]
    assert timed == {"baseline": 0, "candidate:c": 300}, timed
    assert recent


def test_poison_event_times_are_dead_lettered_and_cost_nothing_around_them(tmp_path):
    rng = random.Random(8)
    envs = [envelope(i, rng) for i in range(600)]
    for n, t in enumerate(POISON_TIMES):
        envs[50 * n + 7]["event_time"] = t  # inside batches, between good messages
    jsonl(tmp_path / "t.jsonl", envs)
    cfg = load_config(config(tmp_path, "poison", "t.jsonl"))
    cfg = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"rate": 1.0})})  # every message decoded
    run_replay(cfg)
    run_replay(cfg)  # a restart neither crashes nor stores anything twice
    poisoned = {envs[50 * n + 7]["request_id"] for n in range(len(POISON_TIMES))}
    with duckdb.connect(str(tmp_path / "runs" / "poison" / "store-w0.duckdb"), read_only=True) as con:
        dead = con.execute("SELECT reason, count(*) FROM dead_letters GROUP BY 1").fetchall()
        (consumed,) = con.execute("SELECT sum(consumed) FROM checkpoints").fetchone()
        ids = {r for (r,) in con.execute("SELECT request_id FROM requests").fetchall()}
    assert dead == [("out_of_range", len(POISON_TIMES))]
    assert consumed == len(envs)
    assert not ids & poisoned
    assert ids == {e["request_id"] for e in envs} - poisoned  # every good message around them was stored
    # and the run still judges and reports
    from shadowdiff.diff.judge import judge
    from shadowdiff.diff.load import open_run
    from shadowdiff.reports.html import write_report
    from shadowdiff.schemas.policy import Policy

    con = open_run(tmp_path / "runs", "poison")
    try:
        doc = judge(con, Policy())
        out = write_report(tmp_path / "runs", doc, tmp_path / "poison.html", with_evidently=False, con=con)
    finally:
        con.close()
    assert "out_of_range" in out.read_text(encoding="utf-8")


def test_a_request_sent_twice_counts_once_and_is_reported(tmp_path):
    rng = random.Random(9)
    envs = [envelope(i, rng) for i in range(1000)]
    retries = [dict(envs[i]) for i in range(0, 1000, 25)]  # 40 producer retries, later in the stream
    jsonl(tmp_path / "t.jsonl", envs + retries)
    cfg = load_config(config(tmp_path, "dups", "t.jsonl"))
    cfg = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"rate": 1.0})})
    run_replay(cfg)
    from shadowdiff.diff.judge import judge
    from shadowdiff.diff.load import open_run
    from shadowdiff.schemas.policy import Policy
    from shadowdiff.schemas.verdict import verdict_dict

    con = open_run(tmp_path / "runs", "dups")
    try:
        (stored,) = con.execute("SELECT count(*) FROM requests").fetchone()
        doc = verdict_dict(judge(con, Policy(min_samples=100)))
    finally:
        con.close()
    assert stored == 1040  # both copies are stored, by their own coordinates
    assert doc["data"]["pairs"] == 1000  # ... and judged once
    by_segment = {s["segment"]: s["n"] for s in doc["segments"]}
    assert by_segment["all"] == 1000
    dup = next(c for c in doc["checks"] if c["check"] == "duplicate_requests")
    assert dup["extra"]["duplicates"] == 40
    assert dup["status"] == "warn"
    assert any(w.startswith("duplicate_requests in all: 40 of 1040") for w in doc["warnings"])
