"""Avro envelopes through the replay against a bare fastavro consume + decode loop, measured in
the same run (this machine is shared and noisy, so only the ratio means something).

    python bench/avro_bench.py [--messages 200000] [--rounds 3]

Produces the replay bench's envelopes as bare Avro (a schema file: the registry only adds a
5-byte header and one lookup per schema id), then per round: the reference (kafka-python consume
+ fastavro.schemaless_reader of every message) and the replay at 100% sampling with the
in-process table model, the same pipeline as replay_bench.py's 100% case (target >= 0.8).
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay_bench import PY_TABLE_CAND, T0, bootstrap, config, envelope, raw_consume, timed_replay

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Request",
    "fields": [
        {"name": "request_id", "type": "string"},
        {"name": "event_time", "type": "long"},
        {"name": "segments", "type": {"type": "record", "name": "Segments", "fields": [{"name": "region", "type": "string"}]}},
        {
            "name": "input",
            "type": {
                "type": "record",
                "name": "Input",
                "fields": [{"name": f"n{k}", "type": "double"} for k in range(12)]
                + [{"name": f"c{k}", "type": "string"} for k in range(3)],
            },
        },
        {"name": "output", "type": {"type": "record", "name": "Output", "fields": [{"name": "score", "type": "double"}]}},
        {"name": "latency_ms", "type": "double"},
    ],
}


def produce_avro(bs: str, topic: str, n: int) -> int:
    from fastavro import parse_schema, schemaless_writer
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bs)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    schema, rng, size = parse_schema(SCHEMA), random.Random(1), 0
    p = KafkaProducer(bootstrap_servers=bs, linger_ms=50, batch_size=256 * 1024, acks=1)
    base = int(T0.timestamp() * 1000)
    for i in range(n):
        buf = io.BytesIO()
        schemaless_writer(buf, schema, orjson.loads(envelope(i, rng)))
        size = len(buf.getvalue())
        p.send(topic, key=f"r{i}".encode(), value=buf.getvalue(), timestamp_ms=base + i)
    p.flush()
    p.close()
    return size


def raw_avro(bs: str, topic: str, n: int) -> float:
    """The reference: kafka-python consume + fastavro decode of every message."""
    from fastavro import parse_schema, schemaless_reader

    schema = parse_schema(SCHEMA)
    return raw_consume(bs, topic, n, lambda value: schemaless_reader(io.BytesIO(value), schema, None))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    bs = bootstrap()
    home = Path(tempfile.mkdtemp(prefix="shadowdiff-avro-bench-"))
    (home / "request.avsc").write_text(orjson.dumps(SCHEMA).decode(), encoding="utf-8")
    topic = f"avro-bench-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    size = produce_avro(bs, topic, args.messages)
    print(f"produced {args.messages:,} Avro messages (~{size} B) in {time.perf_counter() - t0:.1f} s")
    raws, rates, ratios = [], [], []
    for i in range(args.rounds):
        raw = raw_avro(bs, topic, args.messages)
        cfg = config(bs, topic, home, f"avro{i}", 1.0, PY_TABLE_CAND, args.messages)
        text = cfg.read_text(encoding="utf-8").replace(
            "[features]", '[envelope]\nformat = "avro"\nschema_file = "request.avsc"\n\n[features]'
        )
        cfg.write_text(text, encoding="utf-8")
        dt, _ = timed_replay(cfg)
        raws.append(raw)
        rates.append(args.messages / dt)
        ratios.append(args.messages / dt / raw)
    print(f"reference: kafka-python consume + fastavro decode: {statistics.median(raws):,.0f} msg/s (median of {args.rounds})")
    print(
        f"replay of Avro at 100% sampling, in-process table model: {statistics.median(rates):,.0f} msg/s, "
        f"ratio {statistics.median(ratios):.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.8)"
    )


if __name__ == "__main__":
    main()
