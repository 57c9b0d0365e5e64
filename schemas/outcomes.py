"""Outcome records: the truth that arrives after a request (a flight's delay, a chargeback, a
click), each naming the request it resolves. The codec turns one record into one outcome row,
or a dead letter with the reason, with the same payload readers (JSON, Avro, Protobuf) and the
same time rules as request envelopes (schemas/envelope.py).

A record (JSON shown; the paths are configured in `[outcomes]`):

    {"request_id": "r-1", "label": "delayed", "value": 1, "observed_at": "2026-12-07T10:00:00Z"}

A request resolved twice is stored twice (each record is its own row, keyed by its source
coordinates); the judge counts the first observed and reports the rest as duplicates."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from shadowdiff.schemas.config import OutcomeSpec
from shadowdiff.schemas.envelope import BadMessage, Payload, decode_object, event_time_us
from shadowdiff.schemas.paths import getter
from shadowdiff.schemas.records import DeadLetter
from shadowdiff.schemas.records import DeadLetterReason as R

_DEAD_RAW_LIMIT = 64 * 1024


class OutcomeRow(NamedTuple):
    source: str
    part: int
    offset: int
    request_id: str
    label: str | None
    value: float | None
    observed_us: int  # microseconds since the epoch


class OutcomeCodec:
    """One outcome record's bytes to an OutcomeRow, or a DeadLetter naming what is wrong.
    `payload`: the reader of the spec's format (None: JSON)."""

    def __init__(self, spec: OutcomeSpec, payload: Payload | None = None) -> None:
        self.spec = spec
        self.payload = payload
        self.max_bytes = spec.source.max_message_bytes
        self._rid = getter(spec.request_id)
        self._label = getter(spec.label) if spec.label else None
        self._value = getter(spec.value) if spec.value else None
        self._observed = getter(spec.observed_at) if spec.observed_at else None

    def decode_record(self, source: str, part: int, rec: Any) -> OutcomeRow | DeadLetter:
        """A source record (kafka-python's ConsumerRecord, a recording's FileRecord)."""
        return self.decode(source, part, rec.offset, rec.key, rec.value, rec.timestamp)

    def decode(
        self, source: str, part: int, offset: int, key: bytes | None, value: bytes | None, timestamp_ms: int
    ) -> OutcomeRow | DeadLetter:
        try:
            return self._row(source, part, offset, decode_object(value, self.payload, self.max_bytes), timestamp_ms)
        except BadMessage as bad:
            raw = value[:_DEAD_RAW_LIMIT] if value is not None else None
            return DeadLetter(source, part, offset, bad.reason.value, bad.detail, key, raw)

    def _row(self, source: str, part: int, offset: int, obj: dict[str, Any], timestamp_ms: int) -> OutcomeRow:
        spec = self.spec
        rid = self._rid(obj)
        if rid is None or rid == "":
            raise BadMessage(R.MISSING_FIELD, f"{spec.request_id}: required")
        if type(rid) is not str:
            if type(rid) is not int:
                raise BadMessage(R.WRONG_TYPE, f"{spec.request_id}: expected string, got {type(rid).__name__}")
            rid = str(rid)  # as the request envelopes store it
        label = None
        if self._label is not None:
            raw = self._label(obj)
            if type(raw) in (dict, list):
                raise BadMessage(R.WRONG_TYPE, f"{spec.label}: expected a class, got {type(raw).__name__}")
            # text, as the models' labels are stored (replay/models/base.py: str(value))
            label = None if raw is None else str(raw)
        number = None
        if self._value is not None:
            raw = self._value(obj)
            if raw is not None:
                if type(raw) is bool:
                    number = float(raw)  # an observed yes / no
                elif type(raw) in (int, float):
                    number = float(raw)
                    if not math.isfinite(number):
                        raise BadMessage(R.OUT_OF_RANGE, f"{spec.value}: {raw!r} is not a finite number")
                else:
                    raise BadMessage(R.WRONG_TYPE, f"{spec.value}: expected a number, got {type(raw).__name__}")
        if label is None and number is None:
            which = " or ".join(p for p in (spec.label, spec.value) if p)
            raise BadMessage(R.MISSING_FIELD, f"{which}: the outcome itself is missing")
        observed = self._observed(obj) if self._observed is not None else None
        return OutcomeRow(source, part, offset, rid, label, number, event_time_us(observed, timestamp_ms, spec.observed_at))
