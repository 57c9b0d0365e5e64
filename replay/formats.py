"""Message formats other than JSON: a message's bytes to the envelope object the codec maps
(schemas/envelope.py), so every path of the run config means the same on every format.

Avro (fastavro decodes) and Protobuf (the protobuf package parses, replay/protobuf_payload.py
maps), with the writer's schema either from a Confluent-compatible schema registry or from a
schema file. The registry's wire format is a zero byte, the schema id in 4 bytes big-endian,
for Protobuf the indexes of the message in its file (zigzag varints; a lone zero for the first
message), then the binary; schemas are fetched once per id with confluent-kafka's registry
client. With a schema file each message is the binary alone.

A message that is not the wire format, names a schema id the registry does not have, is
truncated, or does not fit its schema is a BadMessage with the reason, which the replay stores
as a dead letter. A registry that cannot be reached is not the message's fault:
`SchemaRegistryUnavailable` stops the run before its batch is committed, so nothing is lost.
"""

from __future__ import annotations

import base64
import io
import os
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime
from datetime import time as clock_time
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from shadowdiff.schemas.config import MessageFormat, SchemaRegistrySpec
from shadowdiff.schemas.envelope import BadMessage, Payload
from shadowdiff.schemas.errors import ConfigError, ShadowdiffError
from shadowdiff.schemas.records import DeadLetterReason as R

_MAGIC = 0
_REFUSED_ID_TTL_S = 30.0  # an id the registry lacked is asked again after this (it may be registered since)


class SchemaRegistryUnavailable(ShadowdiffError):
    """The schema registry did not answer (unreachable, 5xx, refused credentials): the batch is
    not committed, and a restarted run reads it again."""


def payload_reader(env: MessageFormat) -> Payload | None:
    """The payload reader of the envelope's format; None for JSON (the codec's own)."""
    if env.format == "json":
        return None
    if env.schema_file is not None:
        if env.format == "protobuf":
            assert env.message_type is not None
            return _DescriptorSetReader(env.schema_file, env.message_type)
        # the bound read itself: one Python call a message fewer, on the replay's reading thread
        return _SchemaFileReader(env.schema_file).avro.read
    assert env.schema_registry is not None
    return _RegistryReader(env.schema_registry, protobuf=env.format == "protobuf")


def format_problems(env: MessageFormat, key: str = "envelope") -> list[str]:
    """Why the envelope's format cannot be read, as preflight lines: a schema file that does not
    parse, credentials missing from the environment, a registry that does not answer."""
    try:
        reader = payload_reader(env)
    except ConfigError as err:
        return [f"{key}: {p}" for p in err.problems]
    if isinstance(reader, _RegistryReader):
        try:
            reader.client.get_subjects()
        except Exception as err:  # refused, unknown host, 401: the client raises each its own way
            return [f"{key}.schema_registry: {reader.url} did not answer: {type(err).__name__}: {err}"[:300]]
    return []


def _parse_schema(text: str, origin: str, named: dict[str, Any] | None = None) -> Any:
    """A parsed Avro schema; `named` holds the named types it may use and receives its own."""
    import fastavro

    try:
        return fastavro.parse_schema(orjson.loads(text), named_schemas=named)
    except (orjson.JSONDecodeError, fastavro.schema.SchemaParseException, ValueError, TypeError, KeyError) as err:
        raise ConfigError(origin, [f"not an Avro schema: {err}"]) from err


def _json_ready(value: Any) -> Any:
    """An Avro datum as the JSON values the codec reads: logical types (timestamps, dates,
    decimals, uuids) and bytes become text or numbers, as a JSON envelope would carry them."""
    t = type(value)
    if t is dict:
        return {k: _json_ready(v) for k, v in value.items()}
    if t is list:
        return [_json_ready(v) for v in value]
    if isinstance(value, datetime | date | clock_time):
        return value.isoformat()
    if t is Decimal:
        return float(value)
    if t is uuid.UUID:
        return str(value)
    if t is bytes:
        return base64.b64encode(value).decode()
    return value


def _needs_conversion(schema_text: str) -> bool:
    return any(s in schema_text for s in ('"logicalType"', '"bytes"', '"fixed"'))


class _Avro:
    """Reads one Avro binary with a parsed writer schema, all of it."""

    def __init__(self, schema: Any, convert: bool) -> None:
        import fastavro

        self.schema = schema
        self.convert = convert
        self._read = fastavro.schemaless_reader

    def read(self, data: bytes | memoryview, where: str = "avro") -> dict[str, Any]:
        buf = io.BytesIO(data)
        try:
            obj = self._read(buf, self.schema, None)
        except Exception as err:  # any failure to decode hostile bytes is the message's, never the run's
            raise BadMessage(
                R.MALFORMED_PAYLOAD, f"{where}: not an Avro encoding of its schema ({type(err).__name__}: {err})"[:300]
            ) from None
        left = len(data) - buf.tell()
        if left:
            raise BadMessage(R.MALFORMED_PAYLOAD, f"{where}: {left} bytes left after the record: written with another schema")
        if type(obj) is not dict:
            raise BadMessage(R.NOT_AN_OBJECT, f"{where}: the schema's top level is not a record")
        return _json_ready(obj) if self.convert else obj


class _SchemaFileReader:
    def __init__(self, path: Path) -> None:
        text = _read_text(path)
        self.avro = _Avro(_parse_schema(text, str(path)), _needs_conversion(text))

    def __call__(self, value: bytes) -> dict[str, Any]:
        return self.avro.read(value, "avro")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("envelope.schema_file", [f"{path}: {err}"]) from err


class _DescriptorSetReader:
    """Bare Protobuf payloads of one message type from a descriptor set file (`protoc
    --include_imports --descriptor_set_out`): a compiled schema, so the run needs no compiler."""

    def __init__(self, path: Path, message_type: str) -> None:
        from google.protobuf import descriptor_pb2
        from google.protobuf.message import DecodeError

        from shadowdiff.replay.protobuf_payload import MessageReader, add_file, well_known_pool

        try:
            files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
        except OSError as err:
            raise ConfigError("envelope.schema_file", [f"{path}: {err}"]) from err
        except DecodeError as err:
            raise ConfigError(
                "envelope.schema_file", [f"{path}: not a Protobuf descriptor set (protoc --descriptor_set_out): {err}"]
            ) from err
        pool = well_known_pool()
        try:
            for proto in files.file:  # protoc writes each file after the files it imports
                add_file(pool, proto)
            descriptor = pool.FindMessageTypeByName(message_type)
        except KeyError:
            declared = sorted(f"{p.package}.{m.name}".lstrip(".") for p in files.file for m in p.message_type)
            raise ConfigError(
                "envelope.message_type", [f"{message_type!r} is not in {path}; it declares {declared[:20]}"]
            ) from None
        except (TypeError, ValueError) as err:  # an import missing from the set, a duplicate name
            raise ConfigError("envelope.schema_file", [f"{path}: {err} (compile it with --include_imports)"[:300]]) from err
        self.reader = MessageReader(descriptor)

    def __call__(self, value: bytes) -> dict[str, Any]:
        return self.reader.read(value, "protobuf")


def _wire_header(value: bytes, protobuf: bool) -> tuple[int, list[int], int]:
    """The schema id, the message indexes (Protobuf) and where the payload starts. The client's
    own parser of this header is not part of its public API, so the few lines are here."""
    if len(value) < 5 or value[0] != _MAGIC:
        raise BadMessage(R.MALFORMED_PAYLOAD, "not the Confluent wire format (magic byte 0, then a 4-byte schema id)")
    schema_id = int.from_bytes(value[1:5], "big")
    if not protobuf:
        return schema_id, [], 5
    at = 5

    def varint() -> int:
        nonlocal at
        result = shift = 0
        while True:
            if at >= len(value) or shift > 63:
                raise BadMessage(R.MALFORMED_PAYLOAD, f"schema id {schema_id}: the message indexes are cut short")
            byte = value[at]
            at += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return (result >> 1) ^ -(result & 1)  # zigzag

    count = varint()
    if count < 0 or count > 100:
        raise BadMessage(R.MALFORMED_PAYLOAD, f"schema id {schema_id}: {count} message indexes")
    indexes = [varint() for _ in range(count)] or [0]
    return schema_id, indexes, at


class _ProtobufFile:
    """A registered Protobuf schema: one file, whose message the wire format names by index."""

    def __init__(self, pool: Any, file: Any) -> None:
        self.pool = pool  # the descriptors live as long as their pool
        self.file = file
        self.readers: dict[tuple[int, ...], Any] = {}

    def reader(self, indexes: list[int], where: str) -> Any:
        key = tuple(indexes)
        found = self.readers.get(key)
        if found is not None:
            return found
        from shadowdiff.replay.protobuf_payload import MessageReader

        types = list(self.file.message_types_by_name.values())
        descriptor = None
        for index in indexes:
            if not 0 <= index < len(types):
                raise BadMessage(R.UNKNOWN_SCHEMA, f"{where}: no message at index {indexes} of its schema")
            descriptor = types[index]
            types = list(descriptor.nested_types)
        assert descriptor is not None
        found = self.readers[key] = MessageReader(descriptor)
        return found

    def read_framed(self, data: bytes, indexes: list[int], start: int, where: str) -> dict[str, Any]:
        return self.reader(indexes, where).read(memoryview(data)[start:], where)


class _RegistryReader:
    def __init__(self, spec: SchemaRegistrySpec, protobuf: bool = False) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        conf: dict[str, Any] = {"url": spec.url}
        if spec.username_env or spec.password_env:
            user, password = os.environ.get(spec.username_env or ""), os.environ.get(spec.password_env or "")
            if user is None or password is None:
                raise ConfigError(
                    "envelope.schema_registry", [f"set {spec.username_env} and {spec.password_env} in the environment"]
                )
            conf["basic.auth.user.info"] = f"{user}:{password}"
        self.client = SchemaRegistryClient(conf)
        self.url = spec.url
        self.protobuf = protobuf
        self.schemas: dict[int, Any] = {}
        self.refused: dict[int, tuple[float, BadMessage]] = {}  # id -> until when, and why

    def __call__(self, value: bytes) -> dict[str, Any]:
        schema_id, indexes, start = _wire_header(value, self.protobuf)
        schema = self.schemas.get(schema_id) or self._fetch(schema_id)
        where = f"schema id {schema_id}"
        if self.protobuf:
            return schema.read_framed(value, indexes, start, where)
        return schema.read(memoryview(value)[start:], where)

    def _get(self, fetch: Callable[[], Any], what: str) -> Any:
        """One registry call; a 404 is the message's (an id or reference the registry lacks),
        anything else is the registry's."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return fetch()
        except SchemaRegistryError as err:
            if err.http_status_code == 404:
                raise BadMessage(R.UNKNOWN_SCHEMA, f"{what} is not in the registry") from None
            raise SchemaRegistryUnavailable(f"schema registry {self.url}: {err}") from err
        except Exception as err:  # the client's transport errors (httpx) are not typed for us
            raise SchemaRegistryUnavailable(f"schema registry {self.url} did not answer: {type(err).__name__}: {err}") from err

    def _fetch(self, schema_id: int) -> Any:
        refused = self.refused.get(schema_id)
        if refused is not None and time.monotonic() < refused[0]:
            raise BadMessage(refused[1].reason, refused[1].detail)
        try:
            decoder = self._decoder(schema_id)
        except BadMessage as err:  # every message of this id gets the same answer for a while
            self.refused[schema_id] = (time.monotonic() + _REFUSED_ID_TTL_S, err)
            raise
        self.schemas[schema_id] = decoder
        return decoder

    def _decoder(self, schema_id: int) -> Any:
        expected = "PROTOBUF" if self.protobuf else "AVRO"
        fmt = "serialized" if self.protobuf else None  # Protobuf as a compiled file, not .proto text
        schema = self._get(lambda: self.client.get_schema(schema_id, fmt=fmt), f"schema id {schema_id}")
        if (schema.schema_type or "AVRO") != expected:
            raise BadMessage(
                R.MALFORMED_PAYLOAD, f"schema id {schema_id} is a {schema.schema_type} schema, the run reads {expected}"
            )
        return self._protobuf_file(schema, schema_id) if self.protobuf else self._avro(schema, schema_id)

    def _avro(self, schema: Any, schema_id: int) -> _Avro:
        named: dict[str, Any] = {}  # the named types of the schemas it references, by full name
        texts = [*self._avro_references(schema, named, set()), schema.schema_str or ""]
        try:
            return _Avro(_parse_schema(texts[-1], f"schema id {schema_id}", named), any(map(_needs_conversion, texts)))
        except ConfigError as err:
            raise BadMessage(R.MALFORMED_PAYLOAD, f"schema id {schema_id} is not an Avro schema: {err}"[:300]) from None

    def _avro_references(self, schema: Any, named: dict[str, Any], seen: set[str]) -> list[str]:
        """The texts of the schemas `schema` references (registered under their own subjects,
        as the serializers register shared records), each parsed into `named` after its own."""
        texts: list[str] = []
        for ref in schema.references or []:
            if ref.name in seen:
                continue
            seen.add(ref.name)
            found = self._get(
                partial(self.client.get_version, ref.subject, ref.version, True),
                f"reference {ref.name} ({ref.subject} v{ref.version})",
            )
            texts += self._avro_references(found.schema, named, seen)
            text = found.schema.schema_str or ""
            try:
                _parse_schema(text, f"reference {ref.name}", named)
            except ConfigError as err:
                raise BadMessage(R.MALFORMED_PAYLOAD, f"reference {ref.name} is not an Avro schema: {err}"[:300]) from None
            texts.append(text)
        return texts

    def _protobuf_file(self, schema: Any, schema_id: int) -> _ProtobufFile:
        from shadowdiff.replay.protobuf_payload import add_file, well_known_pool

        pool = well_known_pool()
        try:
            self._add_references(schema, pool, set())
            file = add_file(pool, _file_proto(f"schema-{schema_id}.proto", schema.schema_str or ""))
        except (TypeError, ValueError) as err:  # not a descriptor, an import it did not reference
            raise BadMessage(R.MALFORMED_PAYLOAD, f"schema id {schema_id} is not a usable Protobuf schema: {err}"[:300]) from None
        return _ProtobufFile(pool, file)

    def _add_references(self, schema: Any, pool: Any, seen: set[str]) -> None:
        """The files a schema imports, registered under their own subjects, added before it."""
        from shadowdiff.replay.protobuf_payload import add_file

        for ref in schema.references or []:
            if ref.name in seen or ref.name.startswith("google/protobuf/"):
                continue
            seen.add(ref.name)
            found = self._get(
                partial(self.client.get_version, ref.subject, ref.version, True, "serialized"),
                f"reference {ref.name} ({ref.subject} v{ref.version})",
            )
            self._add_references(found.schema, pool, seen)
            add_file(pool, _file_proto(ref.name, found.schema.schema_str or ""))


def _file_proto(name: str, text: str) -> Any:
    """A registered Protobuf schema, fetched as `serialized`: a base64 FileDescriptorProto."""
    import binascii

    from google.protobuf import descriptor_pb2
    from google.protobuf.message import DecodeError

    try:
        proto = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(text, validate=True))
    except (binascii.Error, DecodeError) as err:
        raise ValueError(f"not a serialized file descriptor: {err}") from None
    proto.name = name  # the name its importers use, or a name of its own
    return proto


__all__ = ["SchemaRegistryUnavailable", "payload_reader"]
