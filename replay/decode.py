"""Turn a raw message into a Request or a DeadLetter: never raises on bad input."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson

from replay.messages import DeadLetter, RawMessage, Request
from replay.paths import lookup
from schemas.config import RunConfig
from schemas.records import DeadLetterReason as R

_DEAD_RAW_LIMIT = 64 * 1024  # keep this much of an oversized message: enough to diagnose it


class BadMessage(Exception):
    def __init__(self, reason: R, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class Decoder:
    def __init__(self, cfg: RunConfig) -> None:
        self.env = cfg.envelope
        self.max_bytes = cfg.source.max_message_bytes
        self.numeric = list(cfg.features.numeric)
        self.categorical = list(cfg.features.categorical)
        self.segment_fields = list(cfg.segments.fields)
        self.allowed = {k: set(v) for k, v in cfg.segments.allowed.items()}
        hb = cfg.segments.hour_buckets
        self.hour_name = hb.name if hb else None
        self.hour_to_bucket = {h: b for b, hs in hb.buckets.items() for h in hs} if hb else {}

    def check_size(self, msg: RawMessage) -> DeadLetter | None:
        size = len(msg.value or b"")
        if size > self.max_bytes:
            return self.dead(msg, R.OVERSIZED, f"{size} bytes > max_message_bytes {self.max_bytes}")
        return None

    def dead(self, msg: RawMessage, reason: R, detail: str) -> DeadLetter:
        raw = msg.value[:_DEAD_RAW_LIMIT] if msg.value is not None else None
        return DeadLetter(msg.source, msg.part, msg.offset, reason.value, detail, msg.key, raw)

    def parse(self, msg: RawMessage) -> dict[str, Any] | DeadLetter:
        if msg.value is None:
            return self.dead(msg, R.MALFORMED_JSON, "empty value (tombstone)")
        try:
            obj = orjson.loads(msg.value)
        except orjson.JSONDecodeError as err:
            return self.dead(msg, R.MALFORMED_JSON, str(err)[:300])
        if not isinstance(obj, dict):
            return self.dead(msg, R.NOT_AN_OBJECT, f"top level is {type(obj).__name__}")
        return obj

    def segments_of(self, obj: dict[str, Any], event_time: datetime) -> dict[str, str | None]:
        seg_obj = lookup(obj, self.env.segments, None)
        if not isinstance(seg_obj, dict):
            seg_obj = {}
        out: dict[str, str | None] = {}
        for f in self.segment_fields:
            v = seg_obj.get(f)
            out[f] = None if v is None else str(v)
        if self.hour_name is not None:
            out[self.hour_name] = self.hour_to_bucket.get(event_time.hour)
        return out

    def event_time(self, obj: dict[str, Any], msg: RawMessage) -> datetime:
        raw = lookup(obj, self.env.event_time, None)
        if raw is None:
            return datetime.fromtimestamp(msg.timestamp_ms / 1000, UTC)
        if isinstance(raw, bool):
            raise BadMessage(R.WRONG_TYPE, f"{self.env.event_time}: expected time, got bool")
        if isinstance(raw, int | float):
            return datetime.fromtimestamp(raw / 1000, UTC)
        if isinstance(raw, str):
            try:
                t = datetime.fromisoformat(raw)
            except ValueError as err:
                raise BadMessage(R.WRONG_TYPE, f"{self.env.event_time}: not RFC 3339: {raw[:60]!r}") from err
            return t if t.tzinfo else t.replace(tzinfo=UTC)
        raise BadMessage(R.WRONG_TYPE, f"{self.env.event_time}: expected string or number")

    def decode(self, msg: RawMessage, obj: dict[str, Any], reason: str) -> Request | DeadLetter:
        try:
            return self._decode(msg, obj, reason)
        except BadMessage as bad:
            return self.dead(msg, bad.reason, bad.detail)

    def _decode(self, msg: RawMessage, obj: dict[str, Any], reason: str) -> Request:
        env = self.env
        rid = lookup(obj, env.request_id, None)
        if rid is None or rid == "":
            raise BadMessage(R.MISSING_FIELD, f"{env.request_id}: required")
        if not isinstance(rid, str | int) or isinstance(rid, bool):
            raise BadMessage(R.WRONG_TYPE, f"{env.request_id}: expected string, got {type(rid).__name__}")
        model_input = lookup(obj, env.input, None)
        if model_input is None:
            raise BadMessage(R.MISSING_FIELD, f"{env.input}: required")
        if not isinstance(model_input, dict):
            raise BadMessage(R.WRONG_TYPE, f"{env.input}: expected object, got {type(model_input).__name__}")
        t = self.event_time(obj, msg)
        segs = self.segments_of(obj, t)
        for f, allowed in self.allowed.items():
            v = segs.get(f)
            if v is not None and v not in allowed:
                raise BadMessage(R.UNKNOWN_SEGMENT, f"{f}={v[:80]!r} not in the configured values")
        features: dict[str, Any] = {}
        for name in self.numeric:
            v = model_input.get(name)
            # a mistyped feature is stored as NULL (the quality checks count null spikes) but the
            # model still gets the input verbatim, as production did
            features[name] = float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None
        for name in self.categorical:
            v = model_input.get(name)
            features[name] = None if v is None or isinstance(v, dict | list) else str(v)
        latency = lookup(obj, env.live_latency_ms, None)
        live_version = lookup(obj, env.model_version, None)
        feat_version = lookup(obj, env.feature_version, None)
        marker = object()
        live = lookup(obj, env.live_output, marker)
        return Request(
            source=msg.source,
            part=msg.part,
            offset=msg.offset,
            request_id=str(rid),
            event_time=t,
            sampled_reason=reason,
            segments=segs,
            features=features,
            model_input=model_input,
            feature_version=None if feat_version is None else str(feat_version),
            live_output=None if live is marker else live,
            live_latency_ms=float(latency) if isinstance(latency, int | float) and not isinstance(latency, bool) else None,
            live_model_version=None if live_version is None else str(live_version),
            has_live_output=live is not marker,
        )
