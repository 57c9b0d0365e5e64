"""Avro envelopes, written by the ecosystem's own serializer (confluent-kafka's AvroSerializer,
Confluent wire format, a schema registry) or as bare Avro with a schema file, through the real
broker: the same pairs, checks and dead letters as the same traffic in JSON, and each poison
record dead-lettered with its reason. The registry is tests/registry.py's loopback server of the
Confluent REST API."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import orjson
import pytest
from helpers import T0, produce, serving
from registry import assert_judged_as_json, config, judged_topics, registry_app, run_and_judge, traffic

from shadowdiff.diff.load import open_run
from shadowdiff.replay.job import run_replay
from shadowdiff.schemas.config import load_config

pytestmark = pytest.mark.kafka

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "InferenceRequest",
    "namespace": "shop.scoring",
    "fields": [
        {"name": "request_id", "type": "string"},
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {
            "name": "segments",
            "type": {
                "type": "record",
                "name": "Segments",
                "fields": [{"name": "region", "type": "string"}, {"name": "device", "type": "string"}],
            },
        },
        {
            "name": "input",
            "type": {
                "type": "record",
                "name": "Features",
                "fields": [
                    {"name": "x", "type": "double"},
                    {"name": "y", "type": "double"},
                    {"name": "plan", "type": ["null", "string"], "default": None},
                ],
            },
        },
        {"name": "output", "type": {"type": "record", "name": "Answer", "fields": [{"name": "score", "type": "double"}]}},
        {"name": "latency_ms", "type": "double"},
        {"name": "model_version", "type": "string"},
        {"name": "feature_version", "type": "string"},
    ],
}
OTHER = {"type": "record", "name": "Click", "fields": [{"name": "page", "type": "string"}, {"name": "n", "type": "long"}]}


def avro_record(env: dict[str, Any]) -> dict[str, Any]:
    from datetime import datetime

    return {**env, "event_time": datetime.fromisoformat(env["event_time"])}


def test_avro_through_a_registry_and_from_a_schema_file_judges_as_the_same_traffic_in_json(tmp_path, kafka_bootstrap, make_topic):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from fastavro import parse_schema, schemaless_writer

    envs = traffic(1200)
    stamps = [int((T0 + timedelta(seconds=i)).timestamp() * 1000) for i in range(len(envs))]
    keys = [e["request_id"].encode() for e in envs]
    json_topic, wire_topic, file_topic, poison_topic = make_topic(1), make_topic(1), make_topic(1), make_topic(1)
    produce(kafka_bootstrap, json_topic, list(zip(keys, [orjson.dumps(e) for e in envs], strict=True)), stamps)
    (tmp_path / "request.avsc").write_text(orjson.dumps(SCHEMA).decode(), encoding="utf-8")

    parsed = parse_schema(SCHEMA)

    def bare(record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        schemaless_writer(buf, parsed, record)
        return buf.getvalue()

    produce(kafka_bootstrap, file_topic, [(k, bare(avro_record(e))) for k, e in zip(keys, envs, strict=True)], stamps)
    with serving(registry_app()) as registry:
        serializer = AvroSerializer(SchemaRegistryClient({"url": registry}), orjson.dumps(SCHEMA).decode())
        ctx = SerializationContext(wire_topic, MessageField.VALUE)
        wire = [serializer(avro_record(e), ctx) for e in envs]
        (schema_id,) = {int.from_bytes(w[1:5], "big") for w in wire}
        other_id = SchemaRegistryClient({"url": registry}).register_schema("clicks-value", _schema(OTHER))
        poison = [
            b"\x00" + (9999).to_bytes(4, "big") + wire[0][5:],  # a schema id the registry does not have
            wire[1][: len(wire[1]) // 2],  # truncated
            b"\x00"
            + other_id.to_bytes(4, "big")
            + bare({"request_id": "x"} | avro_record(envs[2])),  # another record, read as a click
            orjson.dumps(envs[3]),  # JSON on an Avro topic: not the wire format
        ]
        registry_section = f'[envelope]\nformat = "avro"\nschema_registry = {{ url = "{registry}" }}'
        from_json, from_wire, poisoned = judged_topics(
            tmp_path, kafka_bootstrap, (json_topic, wire_topic, poison_topic), (keys, wire, stamps, poison), registry_section
        )
    from_file = run_and_judge(
        config(tmp_path, kafka_bootstrap, file_topic, "file", '[envelope]\nformat = "avro"\nschema_file = "request.avsc"'), "file"
    )

    # each poison record is a dead letter with its reason, and the good records around it are stored
    assert_judged_as_json(
        (from_json, from_wire, poisoned),
        from_file,
        ["unknown_schema", "malformed_payload", "malformed_payload", "malformed_payload"],
    )
    assert schema_id != other_id


def _schema(schema: dict[str, Any]) -> Any:
    from confluent_kafka.schema_registry import Schema

    return Schema(orjson.dumps(schema).decode(), "AVRO")


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


def test_an_unreachable_registry_stops_the_run_before_anything_is_committed(tmp_path, kafka_bootstrap, make_topic):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from shadowdiff.replay.formats import SchemaRegistryUnavailable

    envs = traffic(300)
    topic = make_topic(1)
    with serving(registry_app()) as registry:
        serializer = AvroSerializer(SchemaRegistryClient({"url": registry}), orjson.dumps(SCHEMA).decode())
        ctx = SerializationContext(topic, MessageField.VALUE)
        messages = [(e["request_id"].encode(), serializer(avro_record(e), ctx)) for e in envs]
        produce(kafka_bootstrap, topic, messages, [int((T0 + timedelta(seconds=i)).timestamp() * 1000) for i in range(300)])
        down = f'[envelope]\nformat = "avro"\nschema_registry = {{ url = "http://127.0.0.1:{closed_port()}" }}'
        # past preflight (which refuses a registry that is down at the start): one that stops
        # answering mid-run
        with pytest.raises(SchemaRegistryUnavailable):
            run_replay(load_config(config(tmp_path, kafka_bootstrap, topic, "down", down)), checked=True)
        con = open_run(tmp_path / "runs", "down")
        try:
            assert con.execute("SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM dead_letters)").fetchone() == (0, 0)
        finally:
            con.close()
        # the same run, once its registry answers, reads every message: none was lost or dead-lettered
        up = f'[envelope]\nformat = "avro"\nschema_registry = {{ url = "{registry}" }}'
        _, rows, dead = run_and_judge(config(tmp_path, kafka_bootstrap, topic, "down", up), "down")
    assert (len(rows), dead) == (600, [])


def test_an_avro_schema_that_references_a_shared_record_is_read_through_its_reference():
    # a record type shared between topics is registered under a subject of its own, and the
    # request's schema names it with a reference (as confluent-kafka's serializers resolve it)
    from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from shadowdiff.replay.formats import payload_reader
    from shadowdiff.schemas.config import EnvelopeMapping, SchemaRegistrySpec
    from shadowdiff.schemas.envelope import BadMessage

    segments = next(f["type"] for f in SCHEMA["fields"] if f["name"] == "segments") | {"namespace": "shop.scoring"}
    request = {
        **SCHEMA,
        "fields": [f | {"type": "shop.scoring.Segments"} if f["name"] == "segments" else f for f in SCHEMA["fields"]],
    }
    with serving(registry_app()) as registry:
        client = SchemaRegistryClient({"url": registry})
        client.register_schema("shop.scoring.Segments", Schema(orjson.dumps(segments).decode(), "AVRO"))
        reference = SchemaReference("shop.scoring.Segments", "shop.scoring.Segments", 1)
        schema = Schema(orjson.dumps(request).decode(), "AVRO", [reference])
        serializer = AvroSerializer(client, schema)
        env = traffic(1)[0]
        value = serializer(avro_record(env), SerializationContext("requests", MessageField.VALUE))
        read = payload_reader(EnvelopeMapping(format="avro", schema_registry=SchemaRegistrySpec(url=registry)))
        assert read is not None
        assert read(value) == env
        # a reference the registry no longer has (its subject hard-deleted): the message's,
        # never the run's
        orphan = Schema(orjson.dumps(request | {"name": "Orphan"}).decode(), "AVRO", [SchemaReference("x.Gone", "gone", 1)])
        orphan_id = client.register_schema("orphan", orphan)
        with pytest.raises(BadMessage) as refused:
            read(b"\x00" + orphan_id.to_bytes(4, "big") + value[5:])
        assert refused.value.reason == "unknown_schema"
