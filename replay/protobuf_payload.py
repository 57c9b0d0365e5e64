"""Protobuf payloads to the JSON-like objects the envelope codec maps.

The `protobuf` package parses (its upb implementation); this module only turns a parsed message
into the values a JSON envelope of the same traffic would carry, so that every envelope path
means the same on every format:

- field names are the .proto names (`request_id`, not the JSON mapping's `requestId`);
- a proto3 field without presence is always there (a zero is a zero, as JSON writes it); a field
  with presence (a message, `optional`, a oneof member) that is not set is null, as Avro's
  nullable fields are;
- 64-bit integers stay numbers (the proto3 JSON mapping makes them strings, which a numeric
  feature would then read as text); enums are their names; bytes are base64, as in the Avro
  reader; `google.protobuf.Timestamp` and `Duration` are their RFC 3339 text; wrappers are their
  value; `Struct`, `Value` and `ListValue` are the JSON they stand for.

A payload that does not parse, or that carries fields its schema does not declare (bytes
written with another message), is the message's problem, never the run's.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from functools import partial
from typing import Any

from google.protobuf import descriptor_pb2, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message

from shadowdiff.schemas.envelope import BadMessage
from shadowdiff.schemas.records import DeadLetterReason as R

_WRAPPERS = frozenset(
    f"google.protobuf.{n}Value" for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_AS_JSON = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})
_AS_TEXT = frozenset({"google.protobuf.Timestamp", "google.protobuf.Duration"})


def well_known_pool() -> DescriptorPool:
    """A descriptor pool holding the well-known types, which schemas import without sending."""
    from google.protobuf import (
        any_pb2,
        duration_pb2,
        empty_pb2,
        field_mask_pb2,
        struct_pb2,
        timestamp_pb2,
        wrappers_pb2,
    )

    pool = DescriptorPool()
    for module in (any_pb2, duration_pb2, empty_pb2, field_mask_pb2, struct_pb2, timestamp_pb2, wrappers_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


def add_file(pool: DescriptorPool, proto: descriptor_pb2.FileDescriptorProto) -> FileDescriptor:
    """Adds a file to the pool, or returns the one already there under its name."""
    try:
        return pool.FindFileByName(proto.name)
    except KeyError:
        pool.Add(proto)
        return pool.FindFileByName(proto.name)


class MessageReader:
    """Parses one message type, all of it, into a dict."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self.message_class = message_factory.GetMessageClass(descriptor)
        self.plans: dict[str, _Plan] = {}

    def read(self, data: bytes | memoryview, where: str) -> dict[str, Any]:
        message = self.message_class()
        try:
            message.ParseFromString(bytes(data))
        except DecodeError as err:
            raise BadMessage(
                R.MALFORMED_PAYLOAD, f"{where}: not a Protobuf encoding of {self.descriptor.full_name} ({err})"[:300]
            ) from None
        # fields the schema does not declare (bytes of another message, which protobuf parses
        # without complaint), at any depth: discarding them shrinks the message. Sizes rather
        # than upb's UnknownFieldSet, which is not safe on a nested message
        size = message.ByteSize()
        message.DiscardUnknownFields()
        if message.ByteSize() != size:
            raise BadMessage(
                R.MALFORMED_PAYLOAD,
                f"{where}: {size - message.ByteSize()} bytes of fields not in {self.descriptor.full_name} "
                "or its messages: written with another schema",
            )
        return self._record(message, where)

    def _plan(self, descriptor: Descriptor) -> _Plan:
        plan = self.plans.get(descriptor.full_name)
        if plan is None:
            plan = self.plans[descriptor.full_name] = _Plan(descriptor, self)
        return plan

    def _record(self, message: Message, where: str) -> dict[str, Any]:
        plan = self._plan(message.DESCRIPTOR)
        out = dict(plan.unset)
        # ListFields (the C parser's) gives the fields that are set; the others keep `unset`
        for field, value in message.ListFields():
            convert = plan.convert[field.number]
            out[field.name] = value if convert is None else convert(value, where)
        for name, empty in plan.containers:
            if name not in out:
                out[name] = empty()
        return out


class _Plan:
    """How one message type becomes a dict, worked out once: each field's value when it is not
    set, and the conversion of each field's value when it is (None: as it is)."""

    def __init__(self, descriptor: Descriptor, reader: MessageReader) -> None:
        self.unset: dict[str, Any] = {}
        self.containers: list[tuple[str, Callable[[], Any]]] = []  # repeated and map fields: a fresh [] or {}
        self.convert: dict[int, Callable[[Any, str], Any] | None] = {}
        for field in descriptor.fields:
            if _is_map(field):
                value_field = field.message_type.fields_by_name["value"]
                one = _converter(value_field, reader)
                self.containers.append((field.name, dict))
                self.convert[field.number] = _map_of(one)
            elif field.is_repeated:
                one = _converter(field, reader)
                self.containers.append((field.name, list))
                self.convert[field.number] = _list_of(one)
            else:
                # set when present; proto3 leaves a zero out, which JSON would carry as a zero
                self.unset[field.name] = None if field.has_presence else _zero(field)
                self.convert[field.number] = _converter(field, reader)


def _zero(field: FieldDescriptor) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[0].name if 0 in field.enum_type.values_by_number else 0
    if field.type == FieldDescriptor.TYPE_BYTES:
        return ""
    return field.default_value


def _list_of(one: Callable[[Any, str], Any] | None) -> Callable[[Any, str], Any]:
    if one is None:
        return lambda values, where: list(values)
    return lambda values, where: [one(v, where) for v in values]


def _map_of(one: Callable[[Any, str], Any] | None) -> Callable[[Any, str], Any]:
    if one is None:
        return lambda values, where: {str(k): v for k, v in values.items()}
    return lambda values, where: {str(k): one(v, where) for k, v in values.items()}


def _is_map(field: FieldDescriptor) -> bool:
    return field.is_repeated and field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _converter(field: FieldDescriptor, reader: MessageReader) -> Callable[[Any, str], Any] | None:
    """The conversion of one value of `field`; None when the parsed value is already what JSON
    would carry (numbers, strings, booleans)."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE or kind == FieldDescriptor.TYPE_GROUP:
        name = field.message_type.full_name
        if name in _WRAPPERS:
            return _wrapper
        if name in _AS_TEXT or name in _AS_JSON:
            return partial(_as_json, field.name)
        return reader._record
    if kind == FieldDescriptor.TYPE_ENUM:
        names = {v.number: v.name for v in field.enum_type.values}
        return lambda value, where: names.get(value, value)
    if kind == FieldDescriptor.TYPE_BYTES:
        return lambda value, where: base64.b64encode(value).decode()
    return None


def _wrapper(value: Any, where: str) -> Any:
    inner = value.value
    return base64.b64encode(inner).decode() if isinstance(inner, bytes) else inner


def _as_json(name: str, value: Message, where: str) -> Any:
    try:
        return json_format.MessageToDict(value)
    except (ValueError, TypeError) as err:  # e.g. a Timestamp out of RFC 3339's range
        raise BadMessage(R.MALFORMED_PAYLOAD, f"{where}: {name}: {err}"[:300]) from None


__all__ = ["MessageReader", "add_file", "well_known_pool"]
