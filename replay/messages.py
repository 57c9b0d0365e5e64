"""Frozen records that flow through the replay hot path."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One source message, undecoded, with the coordinates that key it in the store."""

    source: str
    part: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded, sampled request ready to send to the models."""

    source: str
    part: int
    offset: int
    request_id: str
    event_time: datetime
    sampled_reason: str
    segments: dict[str, str | None]
    features: dict[str, Any]
    model_input: dict[str, Any]
    feature_version: str | None
    live_output: Any = None
    live_latency_ms: float | None = None
    live_model_version: str | None = None
    has_live_output: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source: str
    part: int
    offset: int
    reason: str
    detail: str
    raw_key: bytes | None
    raw_value: bytes | None


@dataclass(frozen=True, slots=True)
class Output:
    """One model's answer (or failure) for one request."""

    variant: str
    model_version: str | None
    score: float | None
    label: str | None
    output: Any
    latency_ms: float | None
    error_class: str | None
    error_detail: str | None
    attempts: int


@dataclass(slots=True)
class Position:
    """Where a partition stands after a batch: next offset to read and running counts."""

    next_offset: int
    consumed: int = 0
    sampled: int = 0
    extra: dict[str, int] = field(default_factory=dict)
