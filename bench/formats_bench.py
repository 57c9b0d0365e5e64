"""Avro or Protobuf envelopes through the replay against a bare consume + decode loop of the
format's own library, measured in the same run (this machine is shared and noisy, so only the
ratio means something).

    python bench/formats_bench.py [--format avro|protobuf] [--messages 200000] [--rounds 3] [--client librdkafka]

Produces the replay bench's envelopes as bare Avro or Protobuf (a schema file: the registry only
adds a header and one lookup per schema id), then per round: the reference (kafka-python consume
+ fastavro.schemaless_reader, or the protobuf message's ParseFromString, of every message) and
the replay at 100% sampling with the in-process table model on `--client`, the same pipeline as
replay_bench.py's 100% case (issue target for Avro: >= 0.8). For comparison, the same loop on
confluent-kafka (librdkafka).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay_bench import PY_TABLE_CAND, T0, bootstrap, config, envelope, raw_consume, raw_consume_rdkafka, timed_replay

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


def protobuf_file() -> Any:
    """The same record as a Protobuf file (package bench, message Request), as protoc compiles it."""
    from google.protobuf import descriptor_pb2

    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="bench.proto", package="bench", syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, str]]) -> None:
        m = file.message_type.add(name=name)
        for number, (field, kind, type_name) in enumerate(fields, 1):
            added = m.field.add(name=field, number=number, label=f.LABEL_OPTIONAL, type=kind)
            if type_name:
                added.type_name = type_name

    message("Segments", [("region", f.TYPE_STRING, "")])
    inputs = [(f"n{k}", f.TYPE_DOUBLE, "") for k in range(12)] + [(f"c{k}", f.TYPE_STRING, "") for k in range(3)]
    message("Input", inputs)
    message("Output", [("score", f.TYPE_DOUBLE, "")])
    message(
        "Request",
        [
            ("request_id", f.TYPE_STRING, ""),
            ("event_time", f.TYPE_INT64, ""),
            ("segments", f.TYPE_MESSAGE, ".bench.Segments"),
            ("input", f.TYPE_MESSAGE, ".bench.Input"),
            ("output", f.TYPE_MESSAGE, ".bench.Output"),
            ("latency_ms", f.TYPE_DOUBLE, ""),
        ],
    )
    return file


def request_class() -> Any:
    from google.protobuf import message_factory
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool()
    pool.Add(protobuf_file())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.Request"))


def encoder(fmt: str) -> Callable[[dict[str, Any]], bytes]:
    if fmt == "protobuf":
        cls = request_class()
        return lambda record: cls(**record).SerializeToString()  # type: ignore[no-any-return]
    from fastavro import parse_schema, schemaless_writer

    schema = parse_schema(SCHEMA)

    def avro(record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        schemaless_writer(buf, schema, record)
        return buf.getvalue()

    return avro


def produce_encoded(bs: str, topic: str, n: int, fmt: str) -> int:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bs)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    encode, rng, size = encoder(fmt), random.Random(1), 0
    p = KafkaProducer(bootstrap_servers=bs, linger_ms=50, batch_size=256 * 1024, acks=1)
    base = int(T0.timestamp() * 1000)
    for i in range(n):
        value = encode(orjson.loads(envelope(i, rng)))
        size = len(value)
        p.send(topic, key=f"r{i}".encode(), value=value, timestamp_ms=base + i)
    p.flush()
    p.close()
    return size


def raw_decode(bs: str, topic: str, n: int, fmt: str, consume: Callable[..., float] = raw_consume) -> float:
    """The reference: kafka-python consume (or `consume`) + the format library's decode of every message."""
    if fmt == "protobuf":
        cls = request_class()
        return consume(bs, topic, n, cls.FromString)
    from fastavro import parse_schema, schemaless_reader

    schema = parse_schema(SCHEMA)
    return consume(bs, topic, n, lambda value: schemaless_reader(io.BytesIO(value), schema, None))


def envelope_section(home: Path, fmt: str) -> str:
    if fmt == "protobuf":
        from google.protobuf import descriptor_pb2

        (home / "request.desc").write_bytes(descriptor_pb2.FileDescriptorSet(file=[protobuf_file()]).SerializeToString())
        return '[envelope]\nformat = "protobuf"\nschema_file = "request.desc"\nmessage_type = "bench.Request"\n'
    (home / "request.avsc").write_text(orjson.dumps(SCHEMA).decode(), encoding="utf-8")
    return '[envelope]\nformat = "avro"\nschema_file = "request.avsc"\n'


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--format", choices=["avro", "protobuf"], default="avro")
    ap.add_argument("--client", choices=["kafka-python", "librdkafka"], default="librdkafka", help="the replay's Kafka client")
    args = ap.parse_args()
    fmt = args.format
    bs = bootstrap()
    home = Path(tempfile.mkdtemp(prefix=f"shadowdiff-{fmt}-bench-"))
    section = envelope_section(home, fmt)
    topic = f"{fmt}-bench-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    size = produce_encoded(bs, topic, args.messages, fmt)
    print(f"produced {args.messages:,} {fmt} messages (~{size} B) in {time.perf_counter() - t0:.1f} s")
    raws, raws_rd, rates, ratios = [], [], [], []
    for i in range(args.rounds):
        raw = raw_decode(bs, topic, args.messages, fmt)
        raws_rd.append(raw_decode(bs, topic, args.messages, fmt, raw_consume_rdkafka))
        cfg = config(bs, topic, home, f"{fmt}{i}", 1.0, PY_TABLE_CAND, args.messages, client=args.client)
        cfg.write_text(cfg.read_text(encoding="utf-8").replace("[features]", section + "\n[features]"), encoding="utf-8")
        dt, _ = timed_replay(cfg)
        raws.append(raw)
        rates.append(args.messages / dt)
        ratios.append(args.messages / dt / raw)
    library = "fastavro decode" if fmt == "avro" else "protobuf ParseFromString"
    print(f"reference: kafka-python consume + {library}: {statistics.median(raws):,.0f} msg/s (median of {args.rounds})")
    print(f"  for comparison: confluent-kafka (librdkafka) consume + {library}: {statistics.median(raws_rd):,.0f} msg/s")
    print(
        f"replay of {fmt} on {args.client} at 100% sampling, in-process table model: {statistics.median(rates):,.0f} msg/s, "
        f"ratio {statistics.median(ratios):.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
