"""The replay pipeline on real parts: Apache Kafka, a real HTTP model server on loopback, real
DuckDB files."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import duckdb
import orjson
import pytest
from helpers import (
    T0,
    TRAFFIC_FIELDS,
    committed_offsets,
    envelope,
    jsonl,
    produce,
    sampled,
    wait_until,
    window_config,
    write_config,
)
from models_for_tests import logistic

from shadowdiff.replay.job import run_replay
from shadowdiff.replay.testing import ModelServer
from shadowdiff.schemas.config import load_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.kafka]


def produce_envelopes(bootstrap: str, topic: str, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    msgs, stamps, ids = [], [], []
    for i in range(n):
        env = envelope(i, rng)
        msgs.append((env["request_id"].encode(), orjson.dumps(env)))
        stamps.append(int((T0 + timedelta(seconds=i)).timestamp() * 1000))
        ids.append(env["request_id"])
    produce(bootstrap, topic, msgs, stamps)
    return ids


def stored(run_home: Path, run: str) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(run_home / run / "store-w0.duckdb"), read_only=True)


def test_window_replay_stores_exactly_the_sampled_set(tmp_path, kafka_bootstrap, make_topic, kafka_client):
    topic = make_topic(3)
    ids = produce_envelopes(kafka_bootstrap, topic, 3000)
    with ModelServer(logistic) as url:
        cfg = window_config(
            tmp_path,
            kafka_bootstrap,
            topic,
            "win",
            f"""
[[candidates]]
name = "v2"
kind = "http"
url = "{url}/predict"
response_path = ""
""",
            rate=0.3,
            client=kafka_client,
        )
        stats = run_replay(load_config(cfg))
    expected = {i for i in ids if sampled(i.encode(), 0.3)}
    assert stats.consumed == 3000
    con = stored(tmp_path / "runs", "win")
    got = {r for (r,) in con.execute("SELECT request_id FROM requests").fetchall()}
    assert got == expected
    per_variant = dict(
        con.execute("SELECT variant, count(*) FILTER (WHERE error_class IS NULL) FROM outputs GROUP BY 1").fetchall()
    )
    assert per_variant == {"baseline": len(expected), "candidate:v2": len(expected)}
    # both outputs are the real answers: live score from the envelope, candidate from the server
    (mismatch,) = con.execute("""SELECT count(*) FROM outputs b JOIN outputs c USING (source, part, "offset")
        WHERE b.variant='baseline' AND c.variant='candidate:v2' AND abs(b.score - c.score) > 1e-9""").fetchone()
    assert mismatch == 0
    assert (tmp_path / "runs" / "win").exists()


def test_sigkill_mid_run_then_restart_stores_every_request_once(tmp_path, kafka_bootstrap, make_topic, unique, kafka_client):
    topic = make_topic(4)
    group = unique("g")
    ids = produce_envelopes(kafka_bootstrap, topic, 12_000, seed=1)
    cfg = window_config(
        tmp_path,
        kafka_bootstrap,
        topic,
        "kill",
        """
[[candidates]]
name = "slow"
kind = "python"
target = "models_for_tests:slow_logistic"
batch_size = 100
""",
        batch=400,
        group=group,
        client=kafka_client,
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    cmd = [sys.executable, "-m", "shadowdiff.cli.main", "replay", "--config", str(cfg), "--no-judge"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = tmp_path / "runs" / "kill" / "store-w0.duckdb"
    # kill only once batches are stored and committed (else the restart is a plain replay)
    before = wait_until(
        lambda: committed_offsets(kafka_bootstrap, topic, group) or proc.poll() is not None, 120, "a committed batch"
    )
    assert proc.poll() is None, "the worker finished before it could be killed; make the run longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert 0 < sum(before.values()) < len(ids)
    # restart: resumes from the checkpoints stored with the rows
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    con = duckdb.connect(str(store), read_only=True)
    n, distinct = con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()
    assert (n, distinct) == (len(ids), len(ids))
    got = {r for (r,) in con.execute("SELECT request_id FROM requests").fetchall()}
    assert got == set(ids)
    (outs,) = con.execute("SELECT count(*) FROM outputs WHERE variant = 'candidate:slow' AND error_class IS NULL").fetchone()
    assert outs == len(ids)


def test_same_window_replayed_twice_stores_the_same_rows(tmp_path, kafka_bootstrap, make_topic, kafka_client):
    topic = make_topic(2)
    produce_envelopes(kafka_bootstrap, topic, 1500, seed=2)
    cand = """
[[candidates]]
name = "v2"
kind = "python"
target = "models_for_tests:logistic"
"""
    cfg = load_config(window_config(tmp_path, kafka_bootstrap, topic, "twice", cand, rate=0.5, client=kafka_client))
    run_replay(cfg)
    q = 'SELECT request_id, "offset", part FROM requests ORDER BY part, "offset"'
    with stored(tmp_path / "runs", "twice") as con:
        first = con.execute(q).fetchall()
    # a full re-replay from T1: forget the checkpoints, keep the rows
    with duckdb.connect(str(tmp_path / "runs" / "twice" / "store-w0.duckdb")) as con:
        con.execute("DELETE FROM checkpoints")
    stats = run_replay(cfg)
    assert stats.consumed == 1500
    with stored(tmp_path / "runs", "twice") as con:
        second = con.execute(q).fetchall()
        (outs,) = con.execute("SELECT count(*) FROM outputs").fetchone()
    assert first == second
    assert outs == 2 * len(first)
    # and into a fresh run: the same sampled set
    run_replay(load_config(window_config(tmp_path, kafka_bootstrap, topic, "twice-b", cand, rate=0.5, client=kafka_client)))
    with stored(tmp_path / "runs", "twice-b") as con:
        assert con.execute(q).fetchall() == first


def test_bad_inputs_are_recorded_and_the_run_goes_on(tmp_path, kafka_bootstrap, make_topic, unique):
    topic = make_topic(1)
    rng = random.Random(3)
    good = [envelope(i, rng) for i in range(40)]
    bad_region = envelope(100, rng)
    bad_region["segments"]["region"] = "<script>mars</script>"
    mistyped = envelope(101, rng)
    mistyped["input"]["x"] = "not-a-number"
    messages = [(e["request_id"].encode(), orjson.dumps(e)) for e in good] + [
        (b"m1", b"{not json"),
        (b"m2", orjson.dumps({"request_id": "m2", "event_time": T0.isoformat()})),  # no input
        (b"m3", orjson.dumps({"request_id": ["a"], "input": {}})),  # mistyped id
        (b"m4", b'{"request_id": "m4", "input": {"pad": "' + b"x" * 5000 + b'"}}'),  # oversized
        (b"m5", orjson.dumps(bad_region)),
        (b"m6", orjson.dumps(mistyped)),
        (b"m7", b"[1, 2, 3]"),
    ]
    produce(kafka_bootstrap, topic, messages)
    with ModelServer(logistic) as url:
        cands = "".join(
            f"""
[[candidates]]
name = "{name}"
kind = "{kind}"
url = "{url}{path}"
timeout_s = 0.3
retries = 1
backoff_s = 0.01
breaker_failures = 1000
"""
            for name, kind, path in [
                ("html", "http", "/html"),
                ("wrong", "http", "/wrong"),
                ("e500", "http", "/500"),
                ("hang", "http", "/hang"),
                ("oip", "oip-v2", "/v2/models/m/infer"),
                ("mlflow", "mlflow", "/invocations"),
                ("plain", "http", "/predict"),
            ]
        )
        cfg_path = write_config(
            tmp_path / "bad.toml",
            f"""
[run]
id = "bad"
home = "{tmp_path / "runs"}"
batch_size = 100
batch_timeout_ms = 200
[source]
kind = "kafka-live"
bootstrap = "{kafka_bootstrap}"
topic = "{topic}"
group = "{unique("g")}"
max_message_bytes = 2000
[features]
numeric = ["x", "y"]
[segments]
fields = ["region"]
allowed = {{ region = ["eu", "us", "apac"] }}
[output]
score_path = "score"
{cands}
""",
        )
        cfg = load_config(cfg_path)
        stop = threading.Event()

        def hook(writer, stats, final):  # the live source never ends: stop once all is read
            if stats.consumed >= len(messages):
                stop.set()

        stats = run_replay(cfg, stop, on_checkpoint=hook, checkpoint_every_s=0.0)
    assert stats.consumed == len(messages)
    con = stored(tmp_path / "runs", "bad")
    dead = dict(con.execute("SELECT reason, count(*) FROM dead_letters GROUP BY 1").fetchall())
    assert dead == {
        "malformed_json": 1,
        "missing_field": 1,
        "wrong_type": 1,
        "oversized": 1,
        "unknown_segment": 1,
        "not_an_object": 1,
    }
    (raw,) = con.execute("SELECT raw_value FROM dead_letters WHERE reason = 'malformed_json'").fetchone()
    assert raw == b"{not json"
    # the mistyped feature is stored as NULL; the model still got the input verbatim
    (x,) = con.execute("SELECT features.x FROM requests WHERE request_id = 'req-101'").fetchone()
    assert x is None
    errors = dict(
        con.execute("""SELECT variant, any_value(error_class) FROM outputs
        WHERE variant LIKE 'candidate:%' GROUP BY 1""").fetchall()
    )
    assert errors["candidate:html"] == "unparsable"
    assert errors["candidate:wrong"] == "wrong_shape"
    assert errors["candidate:e500"] == "http_5xx"
    assert errors["candidate:hang"] == "timeout"
    (ok,) = con.execute("""SELECT count(*) FROM outputs WHERE variant IN ('candidate:oip', 'candidate:mlflow',
        'candidate:plain') AND error_class IS NULL""").fetchone()
    assert ok == 3 * 40  # req-101's "not-a-number" makes the model server answer 500
    (e101,) = con.execute("""SELECT error_class FROM outputs JOIN requests USING (source, part, "offset")
        WHERE request_id = 'req-101' AND variant = 'candidate:plain'""").fetchone()
    assert e101 == "http_5xx"
    (attempts,) = con.execute("SELECT max(attempts) FROM outputs WHERE variant = 'candidate:hang'").fetchone()
    assert attempts == 2  # one retry for a transient timeout
    assert stats.call_errors["candidate:hang/timeout"] == 41


def test_a_recording_produced_to_a_topic_replays_as_the_same_pairs_as_the_file(tmp_path, kafka_bootstrap, make_topic):
    topic = make_topic(3)
    rng = random.Random(41)
    envs = [envelope(i, rng) for i in range(1200)]
    envs[7]["event_time"] = int((T0 + timedelta(seconds=7)).timestamp() * 1000)  # epoch ms works too
    recording = jsonl(tmp_path / "traffic.jsonl", envs)
    common = f"""
{TRAFFIC_FIELDS}
[sampling]
rate = 0.5
key = "request_id"
[output]
score_path = "score"
threshold = 0.5
[[candidates]]
name = "v2"
kind = "python"
target = "models_for_tests:logistic"
"""
    from_file = write_config(
        tmp_path / "file.toml",
        f'[run]\nid = "from-file"\nhome = "{tmp_path / "runs"}"\n[source]\nkind = "file"\npath = "{recording}"\n' + common,
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    cli = [sys.executable, "-m", "shadowdiff.cli.main", "produce", "--bootstrap", kafka_bootstrap, "--topic", topic]
    sent = subprocess.run(
        [*cli, "--file", str(recording)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert sent.returncode == 0, sent.stderr.decode()[-2000:]
    assert orjson.loads(sent.stdout)["sent"] == len(envs)
    window = write_config(
        tmp_path / "window.toml",
        f"""[run]
id = "from-topic"
home = "{tmp_path / "runs"}"
[source]
kind = "kafka-window"
bootstrap = "{kafka_bootstrap}"
topic = "{topic}"
start = "{T0.isoformat()}"
end = "{(T0 + timedelta(hours=1)).isoformat()}"
progress = false
"""
        + common,
    )
    run_replay(load_config(from_file))
    run_replay(load_config(window))
    q = """SELECT r.request_id, r.event_time, b.score, c.score FROM requests r
           JOIN outputs b ON b.source = r.source AND b.part = r.part AND b."offset" = r."offset" AND b.variant = 'baseline'
           JOIN outputs c ON c.source = r.source AND c.part = r.part AND c."offset" = r."offset" AND c.variant = 'candidate:v2'
           ORDER BY r.request_id"""
    with stored(tmp_path / "runs", "from-file") as con:
        file_pairs = con.execute(q).fetchall()
    with stored(tmp_path / "runs", "from-topic") as con:
        topic_pairs = con.execute(q).fetchall()
    expected = {e["request_id"] for e in envs if sampled(e["request_id"].encode(), 0.5)}
    assert {r[0] for r in file_pairs} == expected
    assert topic_pairs == file_pairs
    # each message is keyed by its request id and stamped with its event time
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000)
    got = {r.key.decode(): r.timestamp for r in consumer}
    consumer.close()
    assert got == {f"req-{i}": int((T0 + timedelta(seconds=i)).timestamp() * 1000) for i in range(len(envs))}
