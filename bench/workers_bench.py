"""Many workers, one judge, on a real Kafka topic (8 partitions):

1. one worker replays the topic alone (the reference: its rate and its verdict);
2. in alternating rounds, one worker replays it alone and one while `shadowdiff judge --watch`
   judges its run as it goes: the ratio of the median consumption rates (target >= 0.9);
3. the drill: three workers in one group (w1 SIGKILLed mid-run and restarted, w2 started once
   a third is committed) and one `judge --watch`: one verdict, equal to the reference's (same
   pair-set digest), 0 lost and 0 duplicated requests. With --s3 the drill's workers run as on
   three machines (each its own home) and share their exports through a loopback S3 server
   (moto's); the judge has a fourth home and reads only what S3 holds.

    python bench/workers_bench.py [--messages 400000] [--rounds 3] [--s3] [--skip-ratio]

Every figure is from this run; the machine is shared, so the rate is a ratio within it.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from helpers import committed_offsets, envelope, start_s3_server  # noqa: E402
from replay_bench import bootstrap  # noqa: E402

from shadowdiff.diff.exports import open_exports  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}


def produce_topic(bs: str, n: int) -> str:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"workers-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bs)
    admin.create_topics([NewTopic(topic, 8, 1)])
    admin.close()
    p = KafkaProducer(bootstrap_servers=bs, linger_ms=20, batch_size=512 * 1024, acks=1)
    rng = random.Random(0)
    for i in range(n):
        p.send(topic, key=f"req-{i}".encode(), value=orjson.dumps(envelope(i, rng)))
    p.flush()
    p.close()
    return topic


def config(tmp: Path, run: str, worker: str, bs: str, topic: str, group: str, home: Path | None = None, shared: str = "") -> Path:
    path = tmp / f"{run}-{worker}.toml"
    path.write_text(
        f"""
[run]
id = "{run}"
worker = "{worker}"
home = "{home or tmp / "runs"}"
{shared}
[source]
kind = "kafka-live"
bootstrap = "{bs}"
topic = "{topic}"
group = "{group}"
progress = false
[segments]
fields = ["region", "device"]
[output]
score_path = "score"
[[candidates]]
name = "v2"
kind = "python"
target = "models_for_tests:logistic"
""",
        encoding="utf-8",
    )
    return path


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shadowdiff.cli.main", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def wait_committed(bs: str, topic: str, group: str, n: int, timeout_s: float = 1800) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(committed_offsets(bs, topic, group).values()) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"group {group} did not commit {n} messages")
        time.sleep(0.5)  # polling the group's committed offsets


def stop(proc: subprocess.Popen[str]) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    return orjson.loads(out[out.index("{") :]) if "{" in out else {}


def one_worker(tmp: Path, run: str, bs: str, topic: str, n: int, watch: bool) -> float:
    group = f"g-{uuid.uuid4().hex[:8]}"
    worker = start("replay", "--config", str(config(tmp, run, "w0", bs, topic, group)), "--no-judge")
    judge = start("judge", "--run", run, "--home", str(tmp / "runs"), "--watch", "--every", "5") if watch else None
    wait_committed(bs, topic, group, n)
    summary = stop(worker)
    if judge is not None:
        judge.wait(600)
    return float(summary["consumed_per_s"])


def s3_server() -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server on a free loopback port, with test credentials in the environment as
    the AWS chain reads them (the workers and the judge inherit them)."""
    proc, url = start_s3_server()
    creds = {"AWS_ACCESS_KEY_ID": "bench-key", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1"}
    os.environ.update(creds)
    ENV.update(creds)
    return proc, url


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--messages", type=int, default=400_000)
    args.add_argument("--s3", action="store_true", help="the drill's workers share their exports through loopback S3")
    args.add_argument("--skip-ratio", action="store_true", help="skip the consumption ratio with the judge watching")
    args.add_argument("--rounds", type=int, default=3, help="alternating rounds of the ratio (one worker alone / watched)")
    a = args.parse_args()
    bs = bootstrap()
    n = a.messages
    t0 = time.perf_counter()
    topic = produce_topic(bs, n)
    print(f"produced {n} messages to {topic} (8 partitions) in {time.perf_counter() - t0:.0f} s", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        one_worker(tmp, "alone", bs, topic, n, watch=False)  # the drill's reference verdict
        if not a.skip_ratio:
            # alternating rounds, each its own run and group, ratio of the medians: one round
            # each way is at the mercy of whatever else the machine does meanwhile
            rates: dict[bool, list[float]] = {False: [], True: []}
            for r in range(a.rounds):
                for watch in (True, False) if r % 2 else (False, True):
                    rates[watch].append(one_worker(tmp, f"r{r}-{'watched' if watch else 'alone'}", bs, topic, n, watch))
                print(f"round {r}: alone {rates[False][-1]:,.0f} msg/s, watched {rates[True][-1]:,.0f} msg/s", flush=True)
            alone, watched = statistics.median(rates[False]), statistics.median(rates[True])
            print(f"one worker alone: {alone:,.0f} msg/s; with judge --watch beside it: {watched:,.0f} msg/s (medians)")
            print(f"consumption with the judge watching / without: {watched / alone:.2f} (target >= 0.9)", flush=True)

        subprocess.run(
            [sys.executable, "-m", "shadowdiff.cli.main", "judge", "--run", "alone", "--home", str(tmp / "runs")],
            env=ENV,
            stdout=subprocess.DEVNULL,
            check=False,
        )
        reference = orjson.loads((tmp / "runs" / "alone" / "verdict-v2.json").read_bytes())

        group = f"g-{uuid.uuid4().hex[:8]}"
        judge_home, judge_args, moto = tmp / "runs", [], None
        if a.s3:
            import boto3

            moto, endpoint = s3_server()
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="shadow-runs")
            shared = f'shared = {{ url = "s3://shadow-runs/bench", endpoint_url = "{endpoint}" }}'
            cfgs = {w: config(tmp, "drill", w, bs, topic, group, tmp / f"machine-{w}", shared) for w in ("w0", "w1", "w2")}
            judge_home = tmp / "judge-machine"
            judge_args = ["--shared", "s3://shadow-runs/bench", "--shared-endpoint", endpoint]
        else:
            cfgs = {w: config(tmp, "drill", w, bs, topic, group) for w in ("w0", "w1", "w2")}
        t0 = time.perf_counter()
        judge = start("judge", "--run", "drill", "--home", str(judge_home), "--watch", "--every", "5", *judge_args)
        w0 = start("replay", "--config", str(cfgs["w0"]), "--no-judge")
        w1 = start("replay", "--config", str(cfgs["w1"]), "--no-judge")
        while sum(committed_offsets(bs, topic, group).values()) < n // 6:
            time.sleep(0.5)
        w1.send_signal(signal.SIGKILL)
        w1.wait(30)
        while sum(committed_offsets(bs, topic, group).values()) < n // 3:
            time.sleep(0.5)
        w2 = start("replay", "--config", str(cfgs["w2"]), "--no-judge")
        w1 = start("replay", "--config", str(cfgs["w1"]), "--no-judge")
        wait_committed(bs, topic, group, n)
        for w in (w0, w1, w2):
            stop(w)
        judge.wait(900)
        drill = orjson.loads((judge_home / "drill" / "verdict-v2.json").read_bytes())
        con = open_exports(judge_home, "drill")
        rows, distinct = con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()  # type: ignore[misc]
        con.close()
        if moto is not None:
            moto.terminate()
        where = "sharing exports through loopback S3, " if a.s3 else ""
        print(f"drill: 3 workers ({where}w1 SIGKILLed at 1/6 and restarted, w2 from 1/3) in {time.perf_counter() - t0:.0f} s")
        print(f"  requests {rows:,}, distinct {distinct:,}: lost {n - distinct}, duplicated {rows - distinct}")
        print(
            f"  workers covered: {[w['worker'] for w in drill['coverage']['workers']]}, "
            f"silent: {drill['coverage']['silent_workers']}"
        )
        print(
            f"  verdict {drill['verdict']} vs one worker's {reference['verdict']}; pair-set digest equal: "
            f"{drill['data']['pair_set_digest'] == reference['data']['pair_set_digest']}; pairs {drill['data']['pairs']:,}"
        )


if __name__ == "__main__":
    main()
