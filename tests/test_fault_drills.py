"""Fault drills on a live replay, each ending with every message stored exactly once and the
replay's own lines saying what happened: the broker stopped for 20 s, the candidate killed for
30 s, the worker SIGKILLed five times. (A full disk: tests/test_disk_full.py.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import orjson
import pytest
from helpers import committed_offsets, envelope, produce, wait_until, write_config
from models_for_tests import logistic
from replays import Replay

from shadowdiff.replay.testing import ModelServer

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
KAFKA_SH = ["bash", str(ROOT / "scripts" / "kafka.sh")]

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def live_config(tmp: Path, bootstrap: str, topic: str, group: str, candidate: str, client: str = "kafka-python") -> Path:
    return write_config(
        tmp / "live.toml",
        f"""
[run]
id = "drill"
home = "{tmp / "runs"}"
batch_size = 200
batch_timeout_ms = 200
[source]
kind = "kafka-live"
bootstrap = "{bootstrap}"
topic = "{topic}"
group = "{group}"
client = "{client}"
[output]
score_path = "score"
{candidate}
""",
    )


def messages(start: int, stop: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(start)
    return [(f"req-{i}".encode(), orjson.dumps(envelope(i, rng))) for i in range(start, stop)]


def all_committed(bootstrap: str, topic: str, group: str, n: int) -> bool:
    try:
        return sum(committed_offsets(bootstrap, topic, group).values()) >= n
    except Exception:  # the broker restarting
        return False


def stored_once(store: Path, n: int) -> None:
    with duckdb.connect(str(store), read_only=True) as con:
        rows, distinct = con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()
        ids = {r for (r,) in con.execute("SELECT request_id FROM requests").fetchall()}
    assert (rows, distinct) == (n, n)  # 0 duplicated
    assert ids == {f"req-{i}" for i in range(n)}  # 0 lost


def stored_up_to_checkpoints(store: Path) -> int:
    """Every message below each partition's checkpoint is stored, once, and none past it; the
    number stored."""
    with duckdb.connect(str(store), read_only=True) as con:
        ends = dict(((s, p), o) for s, p, o in con.execute("SELECT source, part, next_offset FROM checkpoints").fetchall())
        stored = con.execute('SELECT source, part, "offset" FROM requests').fetchall()
    assert len(stored) == len(set(stored))  # 0 duplicated
    assert set(stored) == {(s, p, o) for (s, p), end in ends.items() for o in range(end)}  # 0 lost below a checkpoint
    return len(stored)


class PrivateBroker:
    """A broker of one test's own, to stop and restart without disturbing the others, with
    the topic `drill` (2 partitions)."""

    def __init__(self, home: Path) -> None:
        self.env = {**os.environ, "SHADOWDIFF_KAFKA_HOME": str(home)}
        subprocess.run([*KAFKA_SH, "start"], env=self.env, check=True, stdout=subprocess.DEVNULL, timeout=300)
        self.bootstrap = (home / "bootstrap").read_text().strip()

    def create_drill_topic(self) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        admin.create_topics([NewTopic("drill", num_partitions=2, replication_factor=1)])
        admin.close()

    def run(self, command: str, check: bool = True) -> None:
        subprocess.run([*KAFKA_SH, command], env=self.env, check=check, stdout=subprocess.DEVNULL, timeout=300)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path / "kafka")
    try:
        broker.create_drill_topic()
        yield broker
    finally:
        broker.run("stop", check=False)


def test_broker_stopped_20s_mid_run(tmp_path, private_broker, kafka_client):
    bootstrap = private_broker.bootstrap
    produce(bootstrap, "drill", messages(0, 2000))
    python_candidate = '[[candidates]]\nname = "v2"\nkind = "python"\ntarget = "models_for_tests:logistic"'
    cfg = live_config(tmp_path, bootstrap, "drill", "g", python_candidate, kafka_client)
    replay = Replay(cfg)
    replay.until(lambda: all_committed(bootstrap, "drill", "g", 2000), 180, "the first 2,000 committed")

    private_broker.run("stop")
    stopped = time.monotonic()
    down = replay.line("broker unreachable since", 60)
    # the outage lasts 20 s (the drill's length, not a wait for the replay)
    wait_until(lambda: time.monotonic() - stopped >= 20, 30, "20 s of outage")
    assert not any("reachable again" in x for x in replay.lines)
    private_broker.run("restart")
    back = replay.line("broker reachable again after", 120)
    produce(bootstrap, "drill", messages(2000, 4000))
    replay.until(lambda: all_committed(bootstrap, "drill", "g", 4000), 240, "all 4,000 committed after the outage")
    replay.stop()

    stored_once(tmp_path / "runs" / "drill" / "store-w0.duckdb", 4000)
    assert bootstrap in down
    seconds = float(back.split("reachable again after ")[1].split(" s")[0])
    assert seconds >= 20
    assert sum("broker unreachable since" in x for x in replay.lines) == 1  # one line per fault


def test_sigterm_while_the_broker_is_down_exits_promptly_with_the_rows_kept(tmp_path, private_broker, kafka_client):
    bootstrap = private_broker.bootstrap
    produce(bootstrap, "drill", messages(0, 1000))
    # a slow candidate (0.1 s a call of 10 rows): batches are still in flight when the broker
    # goes, and their offset commits meet the outage
    slow = '[[candidates]]\nname = "v2"\nkind = "python"\ntarget = "models_for_tests:slow_logistic"\nbatch_size = 10'
    replay = Replay(live_config(tmp_path, bootstrap, "drill", "g", slow, kafka_client))
    done = replay.until(lambda: sum(committed_offsets(bootstrap, "drill", "g").values()), 180, "a first committed batch")
    assert done < 1000, "everything was committed before the outage; make the candidate slower"
    private_broker.run("stop")
    replay.line("broker unreachable since", 60)
    replay.proc.send_signal(signal.SIGTERM)
    # kafka-python waits for a broker forever unless told otherwise; the replay bounds its
    # commit and its goodbye, so a deploy can stop it during an outage
    assert replay.proc.wait(90) == 0, "".join(replay.lines[-30:])
    # what the replay had read when the broker went is stored, once: on a loaded machine it
    # may not have read all 1,000 by then, so the store is checked against its own checkpoints
    assert stored_up_to_checkpoints(tmp_path / "runs" / "drill" / "store-w0.duckdb") >= done


def test_candidate_killed_30s_mid_run(tmp_path, kafka_bootstrap, make_topic, unique):
    topic, group = make_topic(2), unique("g")
    server = ModelServer(logistic)
    url = server.start()
    port = server.port
    http_candidate = f'[[candidates]]\nname = "v2"\nkind = "http"\nurl = "{url}/predict"\ntimeout_s = 2.0'
    cfg = live_config(tmp_path, kafka_bootstrap, topic, group, http_candidate)
    produce(kafka_bootstrap, topic, messages(0, 1000))
    replay = Replay(cfg)
    replay.until(lambda: all_committed(kafka_bootstrap, topic, group, 1000), 180, "the first 1,000 committed")

    server.stop()  # the candidate is gone: connections refused
    killed = time.monotonic()
    produce(kafka_bootstrap, topic, messages(1000, 2000))  # traffic goes on during the outage
    opened = replay.line("model v2: circuit open after", 60)
    replay.until(lambda: all_committed(kafka_bootstrap, topic, group, 2000), 180, "the outage's messages committed")
    wait_until(lambda: time.monotonic() - killed >= 30, 40, "30 s of outage")
    revived = ModelServer(logistic, port=port)
    revived.start()
    try:
        produce(kafka_bootstrap, topic, messages(2000, 3000))
        recovered = replay.line("model v2: recovered after", 120)
        replay.until(lambda: all_committed(kafka_bootstrap, topic, group, 3000), 180, "all 3,000 committed")
        replay.stop()
    finally:
        revived.stop()

    store = tmp_path / "runs" / "drill" / "store-w0.duckdb"
    stored_once(store, 3000)
    assert "connection" in opened
    assert float(recovered.split("recovered after ")[1].split(" s")[0]) >= 30
    with duckdb.connect(str(store), read_only=True) as con:
        by_class = dict(
            con.execute(
                "SELECT coalesce(error_class, 'ok'), count(*) FROM outputs WHERE variant = 'candidate:v2' GROUP BY 1"
            ).fetchall()
        )
        (late_ok,) = con.execute(
            'SELECT count(*) FROM outputs o JOIN requests r USING (source, part, "offset") '
            "WHERE o.variant = 'candidate:v2' AND o.error_class IS NULL AND CAST(split_part(r.request_id, '-', 2) AS INT) >= 2000"
        ).fetchone()
    # every outage message recorded as an error pair, counted, not lost
    assert sum(by_class.values()) == 3000
    assert by_class.get("connection", 0) + by_class.get("circuit_open", 0) >= 1000
    assert late_ok > 0  # calls succeed again after the recovery


def test_worker_sigkilled_five_times(tmp_path, kafka_bootstrap, make_topic, unique):
    topic, group = make_topic(4), unique("g")
    n = 6000
    produce(kafka_bootstrap, topic, messages(0, n))
    cfg = live_config(
        tmp_path,
        kafka_bootstrap,
        topic,
        group,
        '[[candidates]]\nname = "slow"\nkind = "python"\ntarget = "models_for_tests:slow_logistic"\nbatch_size = 100',
    )
    done = 0
    for _ in range(5):
        replay = Replay(cfg)
        # killed each time only after it stored and committed something more than before
        done = replay.until(
            lambda prev=done: (c := sum(committed_offsets(kafka_bootstrap, topic, group).values())) > prev and c,
            180,
            "a further committed batch",
        )
        replay.proc.send_signal(signal.SIGKILL)
        replay.proc.wait(10)
    assert done < n, "the run finished before the fifth kill; make it longer"
    last = Replay(cfg)
    last.until(lambda: all_committed(kafka_bootstrap, topic, group, n), 300, "everything committed after the kills")
    last.stop()
    stored_once(tmp_path / "runs" / "drill" / "store-w0.duckdb", n)


def test_a_lost_kafka_commit_is_made_again_with_nothing_left_to_read(tmp_path, kafka_bootstrap, make_topic, unique, kafka_client):
    from kafka import KafkaAdminClient
    from kafka.errors import NoError
    from kafka.structs import OffsetAndMetadata, TopicPartition

    topic, group = make_topic(2), unique("g")
    produce(kafka_bootstrap, topic, messages(0, 1000))
    fast = '[[candidates]]\nname = "v2"\nkind = "python"\ntarget = "models_for_tests:logistic"'
    cfg = live_config(tmp_path, kafka_bootstrap, topic, group, fast, kafka_client)
    replay = Replay(cfg)
    replay.until(lambda: all_committed(kafka_bootstrap, topic, group, 1000), 120, "every row stored and committed")
    replay.stop()

    # the group's commits are lost (a commit the broker refused during a rebalance, say): its
    # offsets go back to 0, once the worker's static membership has lapsed and the group is empty
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    zero = {TopicPartition(topic, p): OffsetAndMetadata(0, "", -1) for p in (0, 1)}

    def lost() -> bool:
        try:
            return all(err is NoError for err in admin.alter_group_offsets(group, zero).values())
        except Exception:  # the group not empty yet
            return False

    try:
        wait_until(lost, 120, "the group's offsets set back to 0", poll_s=1.0)
    finally:
        admin.close()
    assert sum(committed_offsets(kafka_bootstrap, topic, group).values()) == 0

    # restarted, the worker resumes from its store's checkpoints (nothing is left to read) and
    # commits them again: the group shows no lag that is not there
    again = Replay(cfg)
    again.until(lambda: all_committed(kafka_bootstrap, topic, group, 1000), 120, "the lost commit made again")
    again.stop()
    assert stored_up_to_checkpoints(tmp_path / "runs" / "drill" / "store-w0.duckdb") == 1000
