"""Replay benchmark against one broker and topic; every figure is a ratio to a reference measured
in the same run, because this machine is shared and noisy.

    python bench/replay_bench.py [--messages 200000] [--big 1000000] [--clients kafka-python,librdkafka]
                                 [--sections replay,http,rss]

Prints: raw kafka-python consume+decode (the reference), and raw confluent-kafka (librdkafka)
consume+decode for comparison; for each Kafka client of the replay (`[source] client`): the
replay at 100% sampling with an in-process batched model (target >= 0.9 of raw): a numpy model
fed a feature table, and, for comparison, one looping over dict rows in Python; at 5% sampling
(target >= 1.5 of raw); an HTTP candidate against a bare concurrent aiohttp client on the same
server (target >= 0.95; also printed: shadowdiff's HTTP client alone, and the replay with its
calls on its own event loop); peak RSS of a replay after 200k and after 1M messages (target:
flat, < 500 MB), with each replay's rate and the seconds its main thread spent publishing
checkpoint exports (it reads no Kafka meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

T0 = datetime(2026, 11, 20, tzinfo=UTC)


def bootstrap() -> str:
    env = os.environ.get("SHADOWDIFF_KAFKA_BOOTSTRAP")
    if env:
        return env
    subprocess.run(["bash", str(ROOT / "scripts" / "kafka.sh"), "start"], check=True, stdout=subprocess.DEVNULL)
    return (ROOT / ".kafka" / "bootstrap").read_text(encoding="utf-8").strip()


def envelope(i: int, rng: random.Random) -> bytes:
    """~312 bytes: a 15-field request (12 numeric, 3 categorical) with segments and live output."""
    inp = {f"n{k}": round(rng.gauss(0, 1), 4) for k in range(12)}
    inp.update({"c0": rng.choice(["a", "b"]), "c1": rng.choice(["x", "y", "z"]), "c2": "k"})
    return orjson.dumps(
        {
            "request_id": f"r{i}",
            "event_time": int((T0 + timedelta(milliseconds=i)).timestamp() * 1000),
            "segments": {"region": rng.choice(["eu", "us", "apac"])},
            "input": inp,
            "output": {"score": 0.5},
            "latency_ms": 3.1,
        }
    )


def produce(bs: str, topic: str, n: int) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bs)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    rng = random.Random(1)
    p = KafkaProducer(bootstrap_servers=bs, linger_ms=50, batch_size=256 * 1024, acks=1)
    base = int(T0.timestamp() * 1000)
    for i in range(n):
        p.send(topic, key=f"r{i}".encode(), value=envelope(i, rng), timestamp_ms=base + i)
    p.flush()
    p.close()


def raw_consume(bs: str, topic: str, n: int, decode: Callable[[bytes], object] = orjson.loads) -> float:
    """The reference: kafka-python (crc32c) consume + `decode` (orjson) of every message."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    c = KafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False, max_partition_fetch_bytes=2 << 20, fetch_max_bytes=64 << 20)
    tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
    c.assign(tps)
    c.seek_to_beginning()
    seen = 0
    t0 = time.perf_counter()
    while seen < n:
        for recs in c.poll(timeout_ms=1000, max_records=2000).values():
            for r in recs:
                decode(r.value)
                seen += 1
    dt = time.perf_counter() - t0
    c.close()
    return seen / dt


def raw_consume_rdkafka(bs: str, topic: str, n: int, decode: Callable[[bytes], object] = orjson.loads) -> float:
    """For comparison: confluent-kafka (librdkafka, crc checked) consume + `decode` of every message."""
    from confluent_kafka import Consumer, TopicPartition

    conf = {"bootstrap.servers": bs, "group.id": "bench-raw", "enable.auto.commit": False, "check.crcs": True}
    c = Consumer({**conf, "fetch.queue.backoff.ms": 5})  # as the replay's source sets it
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    seen = 0
    t0 = time.perf_counter()
    while seen < n:
        for m in c.consume(10_000, 1.0):
            if m.error() is None:
                decode(m.value())
                seen += 1
    dt = time.perf_counter() - t0
    c.close()
    return seen / dt


def config(
    bs: str,
    topic: str,
    home: Path,
    run: str,
    rate: float,
    candidate: str,
    end_ms: int,
    batch_size: int = 20_000,
    client: str = "kafka-python",
) -> Path:
    path = home / f"{run}.toml"
    path.write_text(f"""
[run]
id = "{run}"
home = "{home}"
batch_size = {batch_size}
[source]
kind = "kafka-window"
bootstrap = "{bs}"
topic = "{topic}"
start = "{T0.isoformat()}"
end = "{(T0 + timedelta(milliseconds=end_ms)).isoformat()}"
progress = false
client = "{client}"
[features]
numeric = {[f"n{k}" for k in range(12)]!r}
categorical = ["c0", "c1", "c2"]
[segments]
fields = ["region"]
[sampling]
rate = {rate}
key = "kafka_key"
[output]
score_path = "score"
{candidate}
""")
    return path


PY_CAND = """[[candidates]]
name = "py"
kind = "python"
target = "bench_models:score_batch"
batch_size = 256
"""


PY_TABLE_CAND = """[[candidates]]
name = "py"
kind = "python"
target = "bench_models:score_table"
input = "table"
batch_size = 5000
"""


def timed_replay(cfg_path: Path) -> tuple[float, int]:
    """Seconds of the replay loop (from the first poll to the last commit, like the raw
    reference's timing) and pairs stored. Setup (opening the store, offsets for times) is a
    fixed ~0.3 s that would otherwise dominate a 2-second measurement."""
    from shadowdiff.replay.job import run_replay
    from shadowdiff.schemas.config import load_config

    stats = run_replay(load_config(cfg_path))
    _record_failed_exports(cfg_path)
    return float(stats.summary()["seconds"]), stats.sampled


FAILED_EXPORTS: list[int] = []  # per replay of this process, from its worker's heartbeat


def _record_failed_exports(cfg_path: Path) -> None:
    from shadowdiff.schemas.config import load_config
    from shadowdiff.schemas.layout import RunLayout

    cfg = load_config(cfg_path)
    beat = RunLayout(cfg.run.home, cfg.run.id).worker_exports(cfg.run.worker) / "heartbeat.json"
    FAILED_EXPORTS.append(int(orjson.loads(beat.read_bytes())["failed_exports"]))


def _serve(conn) -> None:  # type: ignore[no-untyped-def]
    from bench_models import score_batch

    from shadowdiff.replay.testing import ModelServer

    srv = ModelServer(score_batch)
    conn.send(srv.start())
    conn.recv()
    srv.stop()


async def bare_client(url: str, bodies: list[bytes], in_flight: int) -> float:
    import aiohttp

    sem = asyncio.Semaphore(in_flight)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as s:

        async def one(b: bytes) -> None:
            async with sem, s.post(url, data=b, headers={"content-type": "application/json"}) as r:
                orjson.loads(await r.read())

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return len(bodies) / (time.perf_counter() - t0)


async def http_model_alone(url: str, inputs: list[dict[str, object]]) -> float:
    """shadowdiff's HTTP client on its own (no Kafka, no store): how much of the replay's ratio
    is the client itself."""
    from shadowdiff.replay.models.http import HttpModel
    from shadowdiff.schemas.config import ModelSpec

    model = HttpModel(ModelSpec(name="alone", kind="http", url=url, concurrency=32))
    try:
        t0 = time.perf_counter()
        await model.predict(inputs)  # type: ignore[arg-type]
        return len(inputs) / (time.perf_counter() - t0)
    finally:
        await model.close()


def rss_child(cfg_path: str) -> None:
    """Replay, then print: messages consumed, peak RSS (MB), the loop's seconds, and the seconds
    of the loop the main thread spent publishing checkpoint exports (it reads no Kafka then)."""
    from measure import peak_rss_mb

    import shadowdiff.replay.exports as exports
    from shadowdiff.replay.job import run_replay
    from shadowdiff.schemas.config import load_config

    publish = exports.Exporter._publish
    spans: list[tuple[float, float]] = []

    def timed_publish(self: exports.Exporter, tops: dict[str, int]) -> Path:
        t0 = time.monotonic()
        try:
            return publish(self, tops)
        finally:
            spans.append((t0, time.monotonic()))

    exports.Exporter._publish = timed_publish  # type: ignore[method-assign]
    stats = run_replay(load_config(Path(cfg_path)))
    seconds = float(stats.summary()["seconds"])
    # the final export comes after the loop's end (`finished`)
    exporting = sum(end - start for start, end in spans if stats.finished is None or start < stats.finished)
    print(f"{stats.consumed} {peak_rss_mb():.0f} {seconds:.2f} {exporting:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--http", type=int, default=50_000)  # ~5 s of calls: 2 s runs were noisy
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="kafka-python,librdkafka", help="the replay's Kafka clients; HTTP and RSS use the last")
    ap.add_argument("--sections", default="replay,http,rss", help="which of replay, http, rss to measure")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    bs = bootstrap()
    home = Path(tempfile.mkdtemp(prefix="shadowdiff-replay-bench-"))
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    produce(bs, topic, args.messages)
    print(f"produced {args.messages:,} messages (~{len(envelope(0, random.Random(0)))} B) in {time.perf_counter() - t0:.1f} s")
    # rounds, each measuring the references right before the replays compared with them; the
    # medians tame a shared, noisy 2-core machine
    clients = args.clients.split(",")
    rounds: dict[str, list[float]] = {"raw": [], "raw_rd": []}
    for i in range(args.rounds if "replay" in sections else 0):
        raw = raw_consume(bs, topic, args.messages)
        rounds["raw"].append(raw)
        rounds["raw_rd"].append(raw_consume_rdkafka(bs, topic, args.messages))
        for client in clients:
            for kind, rate, cand in (("full", 1.0, PY_TABLE_CAND), ("rows", 1.0, PY_CAND), ("five", 0.05, PY_CAND)):
                dt, _ = timed_replay(config(bs, topic, home, f"{kind}-{client}-{i}", rate, cand, args.messages, client=client))
                rounds.setdefault(f"{kind}-{client}", []).append(args.messages / dt)
                rounds.setdefault(f"{kind}-{client}-ratio", []).append(args.messages / dt / raw)
    if "replay" in sections:
        replay_figures(args.rounds, clients, rounds)
    if "http" in sections:
        http_figures(bs, topic, home, args.http, args.rounds, clients[-1])
    if "rss" in sections:
        rss_figures(bs, topic, home, args.messages, args.big, clients[-1])


def replay_figures(n_rounds: int, clients: list[str], rounds: dict[str, list[float]]) -> None:
    med = {k: statistics.median(v) for k, v in rounds.items()}
    print(f"reference: raw kafka-python consume + orjson decode: {med['raw']:,.0f} msg/s (median of {n_rounds})")
    print(f"  for comparison: raw confluent-kafka (librdkafka) consume + orjson decode: {med['raw_rd']:,.0f} msg/s")

    def line(what: str, key: str, target: str) -> None:
        ratios = rounds[f"{key}-ratio"]
        print(
            f"  {what}: {med[key]:,.0f} msg/s, ratio {med[f'{key}-ratio']:.2f} "
            f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}{'; target ' + target if target else ''})"
        )

    for client in clients:
        print(f"replay on {client}:")
        line("100% sampling, in-process batched model (numpy on a feature table)", f"full-{client}", ">= 0.9")
        line("100% sampling, in-process model looping over dict rows in Python", f"rows-{client}", "")
        line("5% sampling", f"five-{client}", ">= 1.5")

    print(f"failed checkpoint exports per replay: {FAILED_EXPORTS} (target: 0 in every round)")


def http_figures(bs: str, topic: str, home: Path, calls: int, n_rounds: int, client: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child,), daemon=True)
    proc.start()
    url = parent.recv()
    rng = random.Random(2)
    inputs = [orjson.loads(envelope(i, rng))["input"] for i in range(calls)]
    bodies = [orjson.dumps(x) for x in inputs]
    http: dict[str, list[float]] = {k: [] for k in ("bare", "alone", "replay", "inline", "ratio", "alone_ratio", "inline_ratio")}
    for i in range(n_rounds):
        bare = asyncio.run(bare_client(f"{url}/predict", bodies, 32))
        alone = asyncio.run(http_model_alone(f"{url}/predict", inputs))
        rates = {}
        for mode, inline in (("replay", False), ("inline", True)):
            cand = f"""[[candidates]]
name = "http"
kind = "http"
url = "{url}/predict"
concurrency = 32
call_process = {str(not inline).lower()}
"""
            dt, sampled = timed_replay(config(bs, topic, home, f"http-{mode}{i}", 1.0, cand, calls, client=client))
            rates[mode] = sampled / dt
        for k, v in (("bare", bare), ("alone", alone), ("replay", rates["replay"]), ("inline", rates["inline"])):
            http[k].append(v)
        http["ratio"].append(rates["replay"] / bare)
        http["alone_ratio"].append(alone / bare)
        http["inline_ratio"].append(rates["inline"] / bare)
    hm = {k: statistics.median(v) for k, v in http.items()}
    print(
        f"HTTP candidate (replay on {client}): bare aiohttp client (gather + semaphore), "
        f"32 in flight: {hm['bare']:,.0f} req/s; "
        f"replay: {hm['replay']:,.0f} pairs/s, ratio {hm['ratio']:.2f} "
        f"(rounds {', '.join(f'{r:.2f}' for r in http['ratio'])}; target >= 0.95)"
    )
    print(
        f"  for comparison: shadowdiff's HttpModel alone, no replay: ratio {hm['alone_ratio']:.2f}; "
        f"the replay with call_process = false (calls on the replay's event loop): ratio {hm['inline_ratio']:.2f}"
    )
    parent.send("stop")
    proc.join(10)


def rss_figures(bs: str, topic: str, home: Path, messages: int, big: int, client: str) -> None:
    for i, n in enumerate((messages, big)):
        big_topic = topic
        if n > messages:
            big_topic = f"bench-big-{uuid.uuid4().hex[:8]}"
            produce(bs, big_topic, n)
        cfg = config(bs, big_topic, home, f"rss{i}-{n}", 1.0, PY_TABLE_CAND, n, client=client)
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'bench'}"}
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(cfg)], env=env, capture_output=True, text=True)
        consumed, rss, seconds, exporting = out.stdout.split()[-4:]
        print(
            f"peak RSS of a replay on {client} after {int(consumed):,} messages: {rss} MB (target < 500 MB, flat); "
            f"its loop {int(consumed) / float(seconds):,.0f} msg/s, {exporting} s of its {seconds} s publishing "
            "checkpoint exports on the main thread"
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rss-child":
        rss_child(sys.argv[2])
    else:
        main()
