"""Protobuf envelopes, written by the ecosystem's own serializer (confluent-kafka's
ProtobufSerializer: Confluent wire format, message indexes, the imported file registered as a
reference) or as bare Protobuf with a descriptor set file, through the real broker: the same
pairs, checks and dead letters as the same traffic in JSON, and each poison record dead-lettered
with its reason. The registry is tests/registry.py's loopback server of the Confluent REST API.

The schema is two .proto files, written here as the descriptors protoc would compile them to
(no compiler runs in the tests): the segments in a file of their own, imported by the request's
file, whose request message is its second one, so the wire format's message index is [1]."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import produce, serving
from registry import (
    assert_judged_as_json,
    assert_never_crashes,
    config,
    judged_topics,
    registry_app,
    run_and_judge,
    traffic,
)

COMMON = """
name: "shop/common.proto" package: "shop.common" syntax: "proto3"
message_type { name: "Segments"
  field { name: "region" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "device" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING } }
"""
REQUEST = """
name: "shop/request.proto" package: "shop.scoring" syntax: "proto3"
dependency: "google/protobuf/timestamp.proto" dependency: "shop/common.proto"
message_type { name: "Answer"
  field { name: "score" number: 1 label: LABEL_OPTIONAL type: TYPE_DOUBLE } }
message_type { name: "InferenceRequest"
  field { name: "request_id" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "event_time" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.Timestamp" }
  field { name: "segments" number: 3 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".shop.common.Segments" }
  field { name: "input" number: 4 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".shop.scoring.InferenceRequest.Features" }
  field { name: "output" number: 5 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".shop.scoring.Answer" }
  field { name: "latency_ms" number: 6 label: LABEL_OPTIONAL type: TYPE_DOUBLE }
  field { name: "model_version" number: 7 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "feature_version" number: 8 label: LABEL_OPTIONAL type: TYPE_STRING }
  nested_type { name: "Features"
    field { name: "x" number: 1 label: LABEL_OPTIONAL type: TYPE_DOUBLE }
    field { name: "y" number: 2 label: LABEL_OPTIONAL type: TYPE_DOUBLE }
    field { name: "plan" number: 3 label: LABEL_OPTIONAL type: TYPE_STRING proto3_optional: true oneof_index: 0 }
    oneof_decl { name: "_plan" } } }
"""
CLICK = """
name: "web/click.proto" package: "web" syntax: "proto3"
message_type { name: "Click"
  field { name: "page" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "n" number: 2 label: LABEL_OPTIONAL type: TYPE_INT64 } }
"""


def compiled(*texts: str) -> tuple[Any, list[Any]]:
    """The files as protoc compiles them, in a pool of their own (with the well-known types):
    the pool and the file descriptor protos, imports first."""
    from google.protobuf import descriptor_pb2, text_format, timestamp_pb2
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool()
    protos = [descriptor_pb2.FileDescriptorProto.FromString(timestamp_pb2.DESCRIPTOR.serialized_pb)]
    protos += [text_format.Parse(t, descriptor_pb2.FileDescriptorProto()) for t in texts]
    for proto in protos:
        pool.Add(proto)
    return pool, protos


def message_class(pool: Any, name: str) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def as_message(cls: Any, env: dict[str, Any]) -> Any:
    message = cls(
        request_id=env["request_id"],
        segments=env["segments"],
        input=env["input"],
        output=env["output"],
        latency_ms=env["latency_ms"],
        model_version=env["model_version"],
        feature_version=env["feature_version"],
    )
    message.event_time.FromDatetime(datetime.fromisoformat(env["event_time"]))
    return message


@pytest.mark.kafka
def test_protobuf_through_a_registry_and_from_a_descriptor_set_judges_as_the_same_traffic_in_json(
    tmp_path, kafka_bootstrap, make_topic
):
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from google.protobuf import descriptor_pb2

    envs = traffic(1200)
    stamps = [int(datetime.fromisoformat(e["event_time"]).timestamp() * 1000) for e in envs]
    keys = [e["request_id"].encode() for e in envs]
    json_topic, wire_topic, file_topic, poison_topic = make_topic(1), make_topic(1), make_topic(1), make_topic(1)
    produce(kafka_bootstrap, json_topic, list(zip(keys, [orjson.dumps(e) for e in envs], strict=True)), stamps)

    pool, protos = compiled(COMMON, REQUEST, CLICK)
    request_class, click_class = message_class(pool, "shop.scoring.InferenceRequest"), message_class(pool, "web.Click")
    messages = [as_message(request_class, e) for e in envs]
    (tmp_path / "request.desc").write_bytes(descriptor_pb2.FileDescriptorSet(file=protos[:3]).SerializeToString())
    produce(kafka_bootstrap, file_topic, [(k, m.SerializeToString()) for k, m in zip(keys, messages, strict=True)], stamps)

    with serving(registry_app()) as registry:
        client = SchemaRegistryClient({"url": registry})
        ctx = SerializationContext(wire_topic, MessageField.VALUE)
        serializer = ProtobufSerializer(request_class, client)
        wire = [serializer(m, ctx) for m in messages]
        (schema_id,) = {int.from_bytes(w[1:5], "big") for w in wire}
        assert wire[0][5:7] == b"\x02\x02"  # the message index array [1]: its length 1 and the index 1, zigzag
        click = ProtobufSerializer(click_class, client)(
            click_class(page="home", n=3), SerializationContext("clicks", MessageField.VALUE)
        )
        click_id = int.from_bytes(click[1:5], "big")
        avro_id = client.register_schema("avro-value", Schema('{"type": "record", "name": "A", "fields": []}', "AVRO"))
        poison = [
            b"\x00" + (9999).to_bytes(4, "big") + wire[0][5:],  # a schema id the registry does not have
            wire[1][:-1],  # truncated inside its last field
            click[:6] + wire[2][7:],  # a request read as a click: fields the click does not declare
            orjson.dumps(envs[3]),  # JSON on a Protobuf topic: not the wire format
            wire[4][:5] + b"\x02\x0a" + wire[4][7:],  # message index [5]: the file has two messages
            b"\x00" + avro_id.to_bytes(4, "big") + b"\x00",  # an Avro schema's id
            wire[6][:5] + b"\x06",  # three message indexes announced, none there
        ]
        registry_section = f'[envelope]\nformat = "protobuf"\nschema_registry = {{ url = "{registry}" }}'
        from_json, from_wire, poisoned = judged_topics(
            tmp_path, kafka_bootstrap, (json_topic, wire_topic, poison_topic), (keys, wire, stamps, poison), registry_section
        )
    file_section = '[envelope]\nformat = "protobuf"\nschema_file = "request.desc"\nmessage_type = "shop.scoring.InferenceRequest"'
    from_file = run_and_judge(config(tmp_path, kafka_bootstrap, file_topic, "file", file_section), "file")

    # each poison record is a dead letter with its reason, and the good records around it are stored
    assert_judged_as_json(
        (from_json, from_wire, poisoned),
        from_file,
        [
            "unknown_schema",
            "malformed_payload",
            "malformed_payload",
            "malformed_payload",
            "unknown_schema",
            "malformed_payload",
            "malformed_payload",
        ],
    )
    assert len({schema_id, click_id, avro_id}) == 3


def descriptor_set(tmp_path: Path) -> tuple[Path, Any]:
    from google.protobuf import descriptor_pb2

    pool, protos = compiled(COMMON, REQUEST)
    path = tmp_path / "request.desc"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=protos).SerializeToString())
    return path, message_class(pool, "shop.scoring.InferenceRequest")


def test_hostile_protobuf_payloads_are_bad_messages_never_crashes(tmp_path):
    from shadowdiff.replay.formats import payload_reader
    from shadowdiff.schemas.config import EnvelopeMapping

    path, request_class = descriptor_set(tmp_path)
    read = payload_reader(EnvelopeMapping(format="protobuf", schema_file=path, message_type="shop.scoring.InferenceRequest"))
    assert read is not None
    valid = as_message(request_class, traffic(1)[0]).SerializeToString()
    record = read(valid)
    assert record["event_time"] == "2026-11-25T00:00:00Z"  # a Timestamp as a JSON envelope carries it
    assert record["input"]["plan"] == "free"
    assert read(request_class(request_id="r").SerializeToString())["input"] is None  # unset: null, as in Avro

    assert_never_crashes(read, valid)


def test_a_descriptor_set_that_does_not_parse_or_lacks_the_message_is_a_config_error(tmp_path):
    from shadowdiff.replay.formats import format_problems
    from shadowdiff.schemas.config import EnvelopeMapping

    path, _ = descriptor_set(tmp_path)
    (tmp_path / "request.proto").write_text('syntax = "proto3";', encoding="utf-8")

    def problems(file: str, message_type: str) -> list[str]:
        env = EnvelopeMapping(format="protobuf", schema_file=tmp_path / file, message_type=message_type)
        return format_problems(env)

    assert problems("request.desc", "shop.scoring.InferenceRequest") == []
    (missing,) = problems("request.desc", "shop.scoring.Request")
    assert "'shop.scoring.Request' is not in" in missing
    assert "shop.scoring.InferenceRequest" in missing
    (source,) = problems("request.proto", "shop.scoring.InferenceRequest")
    assert "not a Protobuf descriptor set (protoc --descriptor_set_out)" in source
    with pytest.raises(ValueError, match="needs message_type"):
        EnvelopeMapping(format="protobuf", schema_file=path)


KINDS = """
name: "kinds.proto" package: "k" syntax: "proto3"
dependency: "google/protobuf/wrappers.proto" dependency: "google/protobuf/struct.proto"
message_type { name: "Kinds"
  field { name: "big" number: 1 label: LABEL_OPTIONAL type: TYPE_INT64 }
  field { name: "flag" number: 2 label: LABEL_OPTIONAL type: TYPE_BOOL }
  field { name: "plan" number: 3 label: LABEL_OPTIONAL type: TYPE_ENUM type_name: ".k.Plan" }
  field { name: "xs" number: 4 label: LABEL_REPEATED type: TYPE_DOUBLE }
  field { name: "weights" number: 5 label: LABEL_REPEATED type: TYPE_MESSAGE type_name: ".k.Kinds.WeightsEntry" }
  field { name: "blob" number: 6 label: LABEL_OPTIONAL type: TYPE_BYTES }
  field { name: "maybe" number: 7 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.DoubleValue" }
  field { name: "extra" number: 8 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.Struct" }
  field { name: "child" number: 9 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".k.Kinds" }
  nested_type { name: "WeightsEntry" options { map_entry: true }
    field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
    field { name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_DOUBLE } } }
enum_type { name: "Plan" value { name: "FREE" number: 0 } value { name: "PRO" number: 1 } }
"""


def test_protobuf_values_read_as_a_json_envelope_carries_them(tmp_path):
    from google.protobuf import descriptor_pb2, struct_pb2, text_format, wrappers_pb2

    from shadowdiff.replay.formats import payload_reader
    from shadowdiff.schemas.config import EnvelopeMapping

    pool, _ = compiled()
    files = [descriptor_pb2.FileDescriptorProto.FromString(m.DESCRIPTOR.serialized_pb) for m in (wrappers_pb2, struct_pb2)]
    files.append(text_format.Parse(KINDS, descriptor_pb2.FileDescriptorProto()))
    for proto in files:
        pool.Add(proto)
    path = tmp_path / "kinds.desc"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
    read = payload_reader(EnvelopeMapping(format="protobuf", schema_file=path, message_type="k.Kinds"))
    assert read is not None
    kinds = message_class(pool, "k.Kinds")
    extra = struct_pb2.Struct()
    extra.update({"a": 1, "b": [True, None]})
    full = kinds(
        big=2**62, flag=True, plan=1, xs=[1.5, -2.0], weights={"eu": 0.25}, blob=b"\x00\xff", extra=extra, child=kinds(big=7)
    )
    full.maybe.value = 0.0
    unset = {
        "big": 0,
        "flag": False,
        "plan": "FREE",
        "xs": [],
        "weights": {},
        "blob": "",
        "maybe": None,
        "extra": None,
        "child": None,
    }
    assert read(full.SerializeToString()) == {
        "big": 2**62,  # a number, not the JSON mapping's string
        "flag": True,
        "plan": "PRO",
        "xs": [1.5, -2.0],
        "weights": {"eu": 0.25},
        "blob": "AP8=",
        "maybe": 0.0,  # a wrapper set to zero is there
        "extra": {"a": 1.0, "b": [True, None]},
        "child": unset | {"big": 7},
    }
    # proto3 writes no zeros: they read as zeros (and empty lists), as JSON carries them;
    # what has presence and is not set reads as null
    assert read(b"") == unset
    first, second = read(b""), read(b"")
    first["xs"].append(1.0)
    assert second["xs"] == []  # each record its own lists
