"""Served traffic: the inference-log record a serving instance writes for every request it
answered, stable and canary alike, and the row a served-traffic run stores for it. The record
(JSON shown, the defaults of the run config's `[served]` paths; schemas/served.v1.schema.json):

    {"request_id": "r-1", "model_version": "churn-v7", "event_time": "2026-12-07T10:00:00.120Z",
     "latency_ms": 41.3, "status": "ok", "segments": {"region": "eu"},
     "input": {"tenure": 14, "plan": "pro"}, "output": {"score": 0.42, "label": "churn"}}

Unlike a shadow run's pairs, the two sides of a canary answered different requests: they are
compared as two samples of the same traffic (diff/served.py)."""

from __future__ import annotations

from typing import NamedTuple


class ServedRow(NamedTuple):
    source: str
    part: int
    offset: int
    request_id: str | None
    version: str
    event_us: int  # microseconds since the epoch
    latency_ms: float | None
    status: str
    ok: bool
    segments: bytes  # a JSON object: {segment field: value as text or None}
    input: bytes | None  # JSON
    score: float | None
    label: str | None
