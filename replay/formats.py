"""Message formats other than JSON: a message's bytes to the envelope object the codec maps
(schemas/envelope.py), so every path of the run config means the same on every format.

Avro, with the writer's schema either from a Confluent-compatible schema registry (the wire
format: a zero byte, the schema id in 4 bytes big-endian, the Avro binary; schemas fetched once
per id with confluent-kafka's registry client) or from a schema file (the Avro binary alone).
fastavro decodes. A message that is not the wire format, names a schema id the registry does not
have, is truncated, or does not use all of its bytes is a BadMessage with the reason, which the
replay stores as a dead letter. A registry that cannot be reached is not the message's fault:
`SchemaRegistryUnavailable` stops the run before its batch is committed, so nothing is lost.
"""

from __future__ import annotations

import base64
import io
import os
import time
import uuid
from datetime import date, datetime
from datetime import time as clock_time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from shadowdiff.schemas.config import EnvelopeMapping, SchemaRegistrySpec
from shadowdiff.schemas.envelope import BadMessage, Payload
from shadowdiff.schemas.errors import ConfigError, ShadowdiffError
from shadowdiff.schemas.records import DeadLetterReason as R

_MAGIC = 0
_UNKNOWN_ID_TTL_S = 30.0  # an id the registry lacked is asked again after this (it may be registered since)


class SchemaRegistryUnavailable(ShadowdiffError):
    """The schema registry did not answer (unreachable, 5xx, refused credentials): the batch is
    not committed, and a restarted run reads it again."""


def payload_reader(env: EnvelopeMapping) -> Payload | None:
    """The payload reader of the envelope's format; None for JSON (the codec's own)."""
    if env.format == "json":
        return None
    if env.schema_file is not None:
        return _SchemaFileReader(env.schema_file)
    assert env.schema_registry is not None
    return _RegistryReader(env.schema_registry)


def format_problems(env: EnvelopeMapping) -> list[str]:
    """Why the envelope's format cannot be read, as preflight lines: a schema file that does not
    parse, credentials missing from the environment, a registry that does not answer."""
    try:
        reader = payload_reader(env)
    except ConfigError as err:
        return [f"envelope: {p}" for p in err.problems]
    if isinstance(reader, _RegistryReader):
        try:
            reader.client.get_subjects()
        except Exception as err:  # refused, unknown host, 401: the client raises each its own way
            return [f"envelope.schema_registry: {reader.url} did not answer: {type(err).__name__}: {err}"[:300]]
    return []


def _parse_schema(text: str, origin: str) -> Any:
    import fastavro

    try:
        return fastavro.parse_schema(orjson.loads(text))
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
        self.schema = schema
        self.convert = convert

    def read(self, data: bytes | memoryview, where: str) -> dict[str, Any]:
        import fastavro

        buf = io.BytesIO(data)
        try:
            obj = fastavro.schemaless_reader(buf, self.schema, None)
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
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError("envelope.schema_file", [f"{path}: {err}"]) from err
        self.avro = _Avro(_parse_schema(text, str(path)), _needs_conversion(text))

    def __call__(self, value: bytes) -> dict[str, Any]:
        return self.avro.read(value, "avro")


class _RegistryReader:
    def __init__(self, spec: SchemaRegistrySpec) -> None:
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
        self.schemas: dict[int, _Avro] = {}
        self.unknown: dict[int, float] = {}

    def __call__(self, value: bytes) -> dict[str, Any]:
        if len(value) < 5 or value[0] != _MAGIC:
            raise BadMessage(R.MALFORMED_PAYLOAD, "not the Confluent wire format (magic byte 0, then a 4-byte schema id)")
        schema_id = int.from_bytes(value[1:5], "big")
        avro = self.schemas.get(schema_id) or self._fetch(schema_id)
        return avro.read(memoryview(value)[5:], f"schema id {schema_id}")

    def _fetch(self, schema_id: int) -> _Avro:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        if time.monotonic() < self.unknown.get(schema_id, 0.0):
            raise BadMessage(R.UNKNOWN_SCHEMA, f"schema id {schema_id} is not in the registry")
        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as err:
            if err.http_status_code == 404:
                self.unknown[schema_id] = time.monotonic() + _UNKNOWN_ID_TTL_S
                raise BadMessage(R.UNKNOWN_SCHEMA, f"schema id {schema_id} is not in the registry") from None
            raise SchemaRegistryUnavailable(f"schema registry {self.url}: {err}") from err
        except Exception as err:  # the client's transport errors (httpx) are not typed for us
            raise SchemaRegistryUnavailable(f"schema registry {self.url} did not answer: {type(err).__name__}: {err}") from err
        if (schema.schema_type or "AVRO") != "AVRO":
            raise BadMessage(R.MALFORMED_PAYLOAD, f"schema id {schema_id} is a {schema.schema_type} schema, the run reads Avro")
        text = schema.schema_str or ""
        try:
            avro = self.schemas[schema_id] = _Avro(_parse_schema(text, f"schema id {schema_id}"), _needs_conversion(text))
        except ConfigError as err:
            raise BadMessage(R.MALFORMED_PAYLOAD, f"schema id {schema_id} is not an Avro schema: {err}"[:300]) from None
        return avro


__all__ = ["SchemaRegistryUnavailable", "payload_reader"]
