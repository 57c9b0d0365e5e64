"""The `shadowdiff replay` command: a bad config stops before anything is consumed, naming the
key; SIGTERM finishes the batch in hand (its HTTP calls included), commits it, and exits 0."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import orjson
import pytest
from helpers import committed_offsets, envelope, produce, wait_until, write_config
from models_for_tests import logistic

from shadowdiff.replay.testing import ModelServer

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}


def replay(cfg: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "shadowdiff.cli.main", "replay", "--config", str(cfg), "--no-judge"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_bad_config_names_the_key_and_consumes_nothing(tmp_path):
    cfg = write_config(
        tmp_path / "bad.toml",
        """
[run]
id = "bad config"
[source]
kind = "kafka-live"
bootstrap = "127.0.0.1:1"
[sampling]
rate = 1.5
[[candidates]]
name = "x"
kind = "http"
url = "not-a-url"
""",
    )
    p = replay(cfg)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 3
    for expected in ("run.id", "source.kafka-live.topic", "sampling.rate", "candidates.0"):
        assert expected in err, err
    assert not (tmp_path / "shadowdiff-runs").exists()  # nothing was created, nothing consumed


def test_unknown_python_target_is_a_config_error(tmp_path):
    (tmp_path / "t.jsonl").write_bytes(orjson.dumps(envelope(0, random.Random(0))) + b"\n")
    cfg = write_config(
        tmp_path / "c.toml",
        """
[run]
id = "r"
[source]
kind = "file"
path = "t.jsonl"
[[candidates]]
name = "x"
kind = "python"
target = "no_such_module:predict"
""",
    )
    p = replay(cfg)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 3
    assert "no_such_module:predict" in err
    assert not (tmp_path / "shadowdiff-runs").exists()


@pytest.mark.kafka
def test_sigterm_finishes_the_batch_commits_and_exits_zero(tmp_path, kafka_bootstrap, make_topic, unique):
    topic = make_topic(2)
    rng = random.Random(9)
    envs = [envelope(i, rng) for i in range(6000)]
    produce(kafka_bootstrap, topic, [(e["request_id"].encode(), orjson.dumps(e)) for e in envs])
    group = unique("g")
    server = ModelServer(logistic)
    server.start()
    cfg = write_config(
        tmp_path / "live.toml",
        f"""
[run]
id = "live"
home = "{tmp_path / "runs"}"
batch_size = 300
batch_timeout_ms = 200
[source]
kind = "kafka-live"
bootstrap = "{kafka_bootstrap}"
topic = "{topic}"
group = "{group}"
[output]
score_path = "score"
[[candidates]]
name = "slow"
kind = "python"
target = "models_for_tests:slow_logistic"
batch_size = 100
[[candidates]]
name = "web"
kind = "http"
url = "{server.url}/predict"
""",
    )
    # its own session: SIGTERM goes to the whole process group, as docker stop or Ctrl-C would
    # send it, so the HTTP call process gets it too and must keep calling until the replay ends
    p = replay(cfg, start_new_session=True)
    store = tmp_path / "runs" / "live" / "store-w0.duckdb"
    # signal only once a batch is stored and its offsets committed, while most is still to come
    wait_until(lambda: committed_offsets(kafka_bootstrap, topic, group) or p.poll() is not None, 120, "a committed batch")
    assert p.poll() is None, "the replay ended before it could be signalled"
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    server.stop()
    assert p.returncode == 0, err[-2000:]
    summary = orjson.loads(out[out.index("{") :])
    assert summary["stopped_by_signal"] is True
    assert 0 < summary["consumed"] < len(envs)
    con = duckdb.connect(str(store), read_only=True)
    (stored,) = con.execute("SELECT count(*) FROM requests").fetchone()
    checkpoints = dict(((p_, o) for p_, o in con.execute("SELECT part, next_offset FROM checkpoints").fetchall()))
    (answered,) = con.execute("SELECT count(*) FROM outputs WHERE variant = 'candidate:web' AND error_class IS NULL").fetchone()
    con.close()
    assert answered == stored  # the signal cost no HTTP call
    assert "calling from the replay's event loop" not in err  # nor the call process
    assert stored == summary["consumed"]  # every consumed message of the finished batches is stored
    # and the group's committed offsets are exactly the stored checkpoints
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    c = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    committed = {tp.partition: c.committed(tp) for tp in (TopicPartition(topic, 0), TopicPartition(topic, 1))}
    c.close()
    assert {k: v for k, v in committed.items() if v is not None} == checkpoints


@pytest.mark.kafka
def test_a_live_replay_says_when_it_has_caught_up_and_rates_exclude_idle_time(tmp_path, kafka_bootstrap, make_topic, unique):
    topic = make_topic(2)
    rng = random.Random(12)
    envs = [envelope(i, rng) for i in range(1500)]
    produce(kafka_bootstrap, topic, [(e["request_id"].encode(), orjson.dumps(e)) for e in envs])
    cfg = write_config(
        tmp_path / "live.toml",
        f"""
[run]
id = "caught"
home = "{tmp_path / "runs"}"
batch_size = 500
batch_timeout_ms = 200
progress_every_s = 0.5
[source]
kind = "kafka-live"
bootstrap = "{kafka_bootstrap}"
topic = "{topic}"
group = "{unique("g")}"
[output]
score_path = "score"
[[candidates]]
name = "v2"
kind = "python"
target = "models_for_tests:logistic"
""",
    )
    p = replay(cfg)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stderr.readline, "")), daemon=True)
    reader.start()
    caught = wait_until(lambda: next((x for x in lines if "caught up" in x), None) or p.poll() is not None, 120, "caught up")
    assert p.poll() is None, "".join(lines)[-2000:]
    assert "lag 0" in caught
    assert f"consumed {len(envs)}" in caught  # caught up means everything there was read
    # a progress line after the catch-up, with nothing new read: the replay has sat idle
    after = len(lines)
    wait_until(lambda: any("progress:" in x for x in lines[after:]) or p.poll() is not None, 60, "a progress line")
    assert any(f"progress: consumed {len(envs)} " in x for x in lines[after:])
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    reader.join(10)
    summary = orjson.loads(out[out.index("{") :])
    assert summary["lag"] == 0
    assert summary["idle_seconds"] > 0
    assert summary["consumed_per_s"] > summary["consumed"] / summary["seconds"]


@pytest.mark.kafka
def test_a_killed_live_worker_restarted_takes_its_partitions_back_at_once(tmp_path, kafka_bootstrap, make_topic, unique):
    topic = make_topic(2)
    rng = random.Random(14)
    envs = [envelope(i, rng) for i in range(2000)]
    produce(kafka_bootstrap, topic, [(e["request_id"].encode(), orjson.dumps(e)) for e in envs[:1000]])
    group = unique("g")
    cfg = write_config(
        tmp_path / "live.toml",
        f"""
[run]
id = "rejoin"
home = "{tmp_path / "runs"}"
batch_size = 500
batch_timeout_ms = 200
[source]
kind = "kafka-live"
bootstrap = "{kafka_bootstrap}"
topic = "{topic}"
group = "{group}"
[output]
score_path = "score"
[[candidates]]
name = "v2"
kind = "python"
target = "models_for_tests:logistic"
""",
    )

    def caught_up_line(p: subprocess.Popen, deadline_s: float) -> str:
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(p.stderr.readline, "")), daemon=True).start()
        return wait_until(lambda: next((x for x in lines if "caught up" in x), None), deadline_s, "caught up")

    first = replay(cfg)
    caught_up_line(first, 120)
    first.kill()  # SIGKILL: no goodbye to the group; its session would last 45 s
    first.wait(10)
    produce(kafka_bootstrap, topic, [(e["request_id"].encode(), orjson.dumps(e)) for e in envs[1000:]])
    second = replay(cfg)
    # static membership: the restarted worker is the same member and gets its partitions back
    # without waiting out the killed one's session timeout (45 s)
    line = caught_up_line(second, 30)
    second.send_signal(signal.SIGTERM)
    second.communicate(timeout=60)
    assert "lag 0" in line
    with duckdb.connect(str(tmp_path / "runs" / "rejoin" / "store-w0.duckdb"), read_only=True) as con:
        n, distinct = con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()
    assert (n, distinct) == (2000, 2000)
