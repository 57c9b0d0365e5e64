"""One verdict per run across workers: three replay workers in one consumer group over an
8-partition topic (one SIGKILLed mid-run and restarted, one started late) only store and export;
one `shadowdiff judge --watch` reads every worker's exports while they write and publishes the
run's single verdict. It equals the verdict of a single worker over the same topic (the same
pairs: the same digest of the pair set), with 0 lost and 0 duplicated pairs."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest
from helpers import committed_offsets, produce, write_config
from replays import Replay
from test_fault_drills import all_committed, messages

from shadowdiff.diff.exports import open_exports
from shadowdiff.schemas.verdict import Verdict, undeclared

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N = 24_000
POLICY = """
[policy]
min_samples = 300
[[checks]]
id = "latency_p95"
require_proof = false
"""


def worker_config(
    tmp: Path, run: str, worker: str, bootstrap: str, topic: str, group: str, shared: str = "", client: str = "kafka-python"
) -> Path:
    return write_config(
        tmp / f"{run}-{worker}.toml",
        f"""
[run]
id = "{run}"
worker = "{worker}"
home = "{tmp / "runs"}"
batch_size = 500
batch_timeout_ms = 200
{shared}
[source]
kind = "kafka-live"
bootstrap = "{bootstrap}"
topic = "{topic}"
group = "{group}"
client = "{client}"
[segments]
fields = ["region"]
[output]
score_path = "score"
[[candidates]]
name = "v2"
kind = "python"
target = "models_for_tests:slow_logistic"
batch_size = 50
""",
    )


def exported_requests(home: Path, run: str) -> int:
    try:
        con = open_exports(home, run)
    except Exception:  # no export yet
        return 0
    try:
        return int(con.execute("SELECT count(*) FROM requests").fetchone()[0])
    finally:
        con.close()


def test_three_workers_and_one_judge_give_the_single_workers_verdict(tmp_path, kafka_bootstrap, make_topic, unique, kafka_client):
    topic = make_topic(8)
    produce(kafka_bootstrap, topic, messages(0, N))
    home = tmp_path / "runs"
    policy = write_config(tmp_path / "policy.toml", POLICY)

    # the reference: one worker over the whole topic
    single = Replay(
        args=[
            "replay",
            "--config",
            str(worker_config(tmp_path, "single", "w0", kafka_bootstrap, topic, unique("g"), client=kafka_client)),
            "--policy",
            str(policy),
            "--no-judge",
        ]
    )
    group = unique("g")
    workers = {
        w: worker_config(tmp_path, "multi", w, kafka_bootstrap, topic, group, client=kafka_client) for w in ("w0", "w1", "w2")
    }
    w0 = Replay(args=["replay", "--config", str(workers["w0"]), "--policy", str(policy), "--no-judge"])
    w1 = Replay(args=["replay", "--config", str(workers["w1"]), "--policy", str(policy), "--no-judge", "--judge-every", "1"])
    judge = Replay(args=["judge", "--run", "multi", "--home", str(home), "--watch", "--every", "1"])
    # w1 is killed once it has exported something, and restarted
    w1.until(
        lambda: (home / "multi" / "exports" / "w1").is_dir() and any((home / "multi" / "exports" / "w1").glob("0*")),
        180,
        "w1's first export",
    )
    w1.proc.send_signal(signal.SIGKILL)
    w1.proc.wait(10)
    # w2 joins late, once a third of the topic is committed
    w0.until(lambda: sum(committed_offsets(kafka_bootstrap, topic, group).values()) >= N // 3, 300, "a third committed")
    # (w2 leaves judging on: seeing other workers in the run, it must not publish a verdict of
    # its own part)
    w2 = Replay(args=["replay", "--config", str(workers["w2"]), "--policy", str(policy), "--judge-every", "1"])
    w1 = Replay(args=["replay", "--config", str(workers["w1"]), "--policy", str(policy), "--no-judge"])
    # the judge reads the workers' data while they write
    judge.until(lambda: (home / "multi" / "verdict-v2.json").exists(), 300, "a verdict while the workers write")
    early = orjson.loads((home / "multi" / "verdict-v2.json").read_bytes())
    assert early["run_active"] is True
    w0.until(lambda: all_committed(kafka_bootstrap, topic, group, N), 600, "the topic committed by the group")
    single.until(lambda: exported_requests(home, "single") >= N, 600, "the single worker's run exported")
    w2.line("this worker does not judge it", 60)
    for r in (w0, w1, w2, single):
        r.stop()
    # every worker's final export read: the judge publishes its last verdict and exits
    code = judge.proc.wait(180)
    assert code in (0, 1, 2), "".join(judge.lines[-30:])
    multi = orjson.loads((home / "multi" / "verdict-v2.json").read_bytes())
    assert multi["run_active"] is False
    assert [w["worker"] for w in multi["coverage"]["workers"]] == ["w0", "w1", "w2"]
    assert multi["coverage"]["silent_workers"] == []

    con = open_exports(home, "multi")
    try:
        rows, distinct = con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()
        ids = {r for (r,) in con.execute("SELECT request_id FROM requests").fetchall()}
    finally:
        con.close()
    assert (rows, distinct) == (N, N)  # 0 duplicated
    assert ids == {f"req-{i}" for i in range(N)}  # 0 lost

    ref = Replay(args=["judge", "--run", "single", "--home", str(home), "--json"])
    assert ref.proc.wait(180) in (0, 1, 2)
    reference = orjson.loads((home / "single" / "verdict-v2.json").read_bytes())
    assert multi["data"]["pair_set_digest"] == reference["data"]["pair_set_digest"]
    assert multi["data"]["pairs"] == reference["data"]["pairs"] == N
    assert multi["verdict"] == reference["verdict"]

    def scores(doc: dict) -> dict:
        # what the stored scores decide (latency and error windows depend on each run's timing)
        return {
            (c["check"], c["segment"]): (c["status"], c["value"])
            for c in doc["checks"]
            if c["kind"] in ("label_flip", "score_diff", "score_shift", "prediction_drift")
        }

    assert scores(multi) == scores(reference)


def test_workers_on_other_machines_share_their_exports_through_s3(tmp_path, kafka_bootstrap, make_topic, unique, s3_endpoint):
    import boto3

    n = 6000
    topic, group = make_topic(4), unique("g")
    produce(kafka_bootstrap, topic, messages(0, n))
    bucket = unique("runs")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    shared = f'shared = {{ url = "s3://{bucket}/shadow", endpoint_url = "{s3_endpoint}" }}'
    policy = write_config(tmp_path / "policy.toml", POLICY)
    # two "machines": each worker has its own home; the judge a third one, fed only from S3
    for m in ("m1", "m2"):
        (tmp_path / m).mkdir()
    workers = [
        Replay(
            args=[
                "replay",
                "--config",
                str(worker_config(tmp_path / m, "s3run", w, kafka_bootstrap, topic, group, shared)),
                "--policy",
                str(policy),
                "--no-judge",
                "--judge-every",
                "1",
            ]
        )
        for m, w in (("m1", "w0"), ("m2", "w1"))
    ]
    judge_home = tmp_path / "judge"
    judge = Replay(
        args=[
            "judge",
            "--run",
            "s3run",
            "--home",
            str(judge_home),
            "--watch",
            "--every",
            "1",
            "--shared",
            f"s3://{bucket}/shadow",
            "--shared-endpoint",
            s3_endpoint,
        ]
    )
    workers[0].until(lambda: all_committed(kafka_bootstrap, topic, group, n), 600, "the topic committed by the group")
    for w in workers:
        w.stop()
    code = judge.proc.wait(180)
    assert code in (0, 1, 2), "".join(judge.lines[-30:])
    doc = orjson.loads((judge_home / "s3run" / "verdict-v2.json").read_bytes())
    assert doc["run_active"] is False
    assert [w["worker"] for w in doc["coverage"]["workers"]] == ["w0", "w1"]
    assert undeclared(Verdict.model_validate(doc)) == []  # a published verdict (coverage, run_active) is typed
    assert doc["data"]["pairs"] == n
    con = open_exports(judge_home, "s3run")
    try:
        rows, distinct = con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()
    finally:
        con.close()
    assert (rows, distinct) == (n, n)
    assert not list(judge_home.glob("s3run/store-*"))  # the judge saw no store: only what S3 holds


def test_a_worker_that_stopped_reporting_is_named_in_the_verdict(tmp_path, kafka_bootstrap, make_topic, unique):
    topic, group = make_topic(2), unique("g")
    produce(kafka_bootstrap, topic, messages(0, 3000))
    home = tmp_path / "runs"
    cfg = worker_config(tmp_path, "quiet", "w0", kafka_bootstrap, topic, group)
    worker = Replay(args=["replay", "--config", str(cfg), "--no-judge", "--judge-every", "1"])
    worker.until(lambda: any((home / "quiet" / "exports" / "w0").glob("0*")), 180, "a first export")
    worker.proc.send_signal(signal.SIGKILL)  # no final export, no heartbeat from now on
    worker.proc.wait(10)
    judge = Replay(args=["judge", "--run", "quiet", "--home", str(home), "--watch", "--every", "1", "--silent-after", "2s"])

    def silent() -> dict | None:
        path = home / "quiet" / "verdict-v2.json"
        doc = orjson.loads(path.read_bytes()) if path.exists() else None
        return doc if doc and doc["coverage"]["silent_workers"] == ["w0"] else None

    doc = judge.until(silent, 120, "the verdict naming w0 silent")
    assert doc["run_active"] is True
    assert any("worker w0 has not reported" in r for r in doc["reasons"])
    judge.proc.send_signal(signal.SIGTERM)  # the watch ends, its exit code the last verdict's
    assert judge.proc.wait(60) in (0, 1, 2)
