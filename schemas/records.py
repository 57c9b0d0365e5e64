"""Names shared by every package: variants, error classes, dead-letter reasons, statuses."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

BASELINE = "baseline"
BASELINE_REPEAT = "baseline_repeat"
CANDIDATE_PREFIX = "candidate:"


def candidate_variant(name: str) -> str:
    """The `outputs.variant` value of the candidate called `name`."""
    return f"{CANDIDATE_PREFIX}{name}"


class ErrorClass(StrEnum):
    """Why a model call produced no usable output (`outputs.error_class`)."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    UNPARSABLE = "unparsable"  # not JSON (an HTML error page, truncated body)
    WRONG_SHAPE = "wrong_shape"  # JSON, but not where the mapping says the output is
    CIRCUIT_OPEN = "circuit_open"  # not called: the candidate's breaker is open
    # refused as too many calls (429, or 503 with Retry-After): the shadow's own load, not a
    # failure of the model; judged apart from its errors (the shadow_load check)
    THROTTLED = "throttled"
    EXCEPTION = "exception"  # an in-process callable raised
    MISSING = "missing"  # live baseline output absent from the envelope


# run_meta key of a worker's store, true once its source was read to the end (a file, a Kafka
# window) or the run was stopped: no more pairs will come from it
SOURCE_COMPLETE = "source_complete:"


def source_complete_key(worker: str) -> str:
    return SOURCE_COMPLETE + worker


# event times stored are within [1970, 2200): outside it a number is another unit (a nanosecond
# epoch) or garbage, and such values overflow Arrow's timestamps or print as "(BC)" strings
EVENT_TIME_MAX_US = 7_258_118_400_000_000  # 2200-01-01T00:00:00Z
# model inputs nest at most this deep: the JSON writers stop at 255 levels (orjson), and a call
# wraps the input in a few more; no real model input comes near it
MAX_INPUT_DEPTH = 128


class DeadLetterReason(StrEnum):
    """Why a source message was not stored as a request (`dead_letters.reason`)."""

    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"  # e.g. an event time outside 1970..2200 (a nanosecond epoch, 1e300)
    TOO_DEEP = "too_deep"  # a model input nested deeper than MAX_INPUT_DEPTH
    OVERSIZED = "oversized"
    UNKNOWN_SEGMENT = "unknown_segment"
    UNKNOWN_SCHEMA = "unknown_schema"  # a schema id the registry does not have
    MALFORMED_PAYLOAD = "malformed_payload"  # not the wire format, truncated, or not its schema's encoding


class Status(StrEnum):
    """Verdict of a check, a segment or a whole run."""

    GO = "go"
    NO_GO = "no_go"
    PENDING = "pending"


class RawMessage(NamedTuple):
    """One message with its coordinates: built only for messages that get decoded."""

    source: str
    part: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(slots=True)
class DeadLetter:
    source: str
    part: int
    offset: int
    reason: str
    detail: str
    raw_key: bytes | None
    raw_value: bytes | None
