"""Turn a raw message into a Request or a DeadLetter: never raises on bad input.

Hot path: field paths are compiled once into getters, and event times stay integers
(microseconds) all the way into Arrow."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from replay.messages import DeadLetter, RawMessage, Request
from schemas.config import RunConfig
from schemas.paths import getter
from schemas.records import DeadLetterReason as R

_DEAD_RAW_LIMIT = 64 * 1024  # keep this much of an oversized message: enough to diagnose it
_NUMBER = (int, float)
_HOUR_US = 3_600_000_000


class BadMessage(Exception):
    def __init__(self, reason: R, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class Decoder:
    def __init__(self, cfg: RunConfig) -> None:
        env = cfg.envelope
        self.env = env
        self.max_bytes = cfg.source.max_message_bytes
        self.numeric = list(cfg.features.numeric)
        self.categorical = list(cfg.features.categorical)
        self.segment_fields = list(cfg.segments.fields)
        self.allowed = {k: set(v) for k, v in cfg.segments.allowed.items()}
        hb = cfg.segments.hour_buckets
        self.hour_name = hb.name if hb else None
        self.hour_to_bucket = {h: b for b, hs in hb.buckets.items() for h in hs} if hb else {}
        self.get_rid = getter(env.request_id)
        self.get_time = getter(env.event_time)
        self.get_segments = getter(env.segments)
        self.get_input = getter(env.input)
        self.get_latency = getter(env.live_latency_ms)
        self.get_version = getter(env.model_version)
        self.get_feature_version = getter(env.feature_version)
        live_steps = env.live_output.split(".") if env.live_output else []
        self._live_parent = getter(".".join(live_steps[:-1])) if len(live_steps) > 1 else (lambda o: o)
        self._live_key = live_steps[-1] if live_steps else None

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
        if type(obj) is not dict:
            return self.dead(msg, R.NOT_AN_OBJECT, f"top level is {type(obj).__name__}")
        return obj

    def segments_of(self, obj: dict[str, Any], event_time_us: int) -> dict[str, str | None]:
        seg_obj = self.get_segments(obj)
        if type(seg_obj) is not dict:
            seg_obj = {}
        out: dict[str, str | None] = {}
        for f in self.segment_fields:
            v = seg_obj.get(f)
            out[f] = None if v is None else (v if type(v) is str else str(v))
        if self.hour_name is not None:
            out[self.hour_name] = self.hour_to_bucket.get((event_time_us // _HOUR_US) % 24)
        return out

    def event_time_us(self, obj: dict[str, Any], msg: RawMessage) -> int:
        raw = self.get_time(obj)
        if raw is None:
            return msg.timestamp_ms * 1000
        t = type(raw)
        if t is int or t is float:
            return int(raw * 1000)
        if t is str:
            try:
                dt = datetime.fromisoformat(raw)
            except ValueError as err:
                raise BadMessage(R.WRONG_TYPE, f"{self.env.event_time}: not RFC 3339: {raw[:60]!r}") from err
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            return int(dt.timestamp() * 1_000_000)
        raise BadMessage(R.WRONG_TYPE, f"{self.env.event_time}: expected string or number, got {t.__name__}")

    def decode(self, msg: RawMessage, obj: dict[str, Any], reason: str) -> Request | DeadLetter:
        try:
            return self._decode(msg, obj, reason)
        except BadMessage as bad:
            return self.dead(msg, bad.reason, bad.detail)

    def _decode(self, msg: RawMessage, obj: dict[str, Any], reason: str) -> Request:
        rid = self.get_rid(obj)
        if rid is None or rid == "":
            raise BadMessage(R.MISSING_FIELD, f"{self.env.request_id}: required")
        if type(rid) is not str and type(rid) is not int:
            raise BadMessage(R.WRONG_TYPE, f"{self.env.request_id}: expected string, got {type(rid).__name__}")
        model_input = self.get_input(obj)
        if model_input is None:
            raise BadMessage(R.MISSING_FIELD, f"{self.env.input}: required")
        if type(model_input) is not dict:
            raise BadMessage(R.WRONG_TYPE, f"{self.env.input}: expected object, got {type(model_input).__name__}")
        t_us = self.event_time_us(obj, msg)
        segs = self.segments_of(obj, t_us)
        for f, allowed in self.allowed.items():
            v = segs.get(f)
            if v is not None and v not in allowed:
                raise BadMessage(R.UNKNOWN_SEGMENT, f"{f}={v[:80]!r} not in the configured values")
        get = model_input.get
        # a mistyped or non-finite feature is stored as NULL (the quality checks count null
        # spikes) but the model still gets the input verbatim, as production did
        nums = [get(name) for name in self.numeric]
        cats = [get(name) for name in self.categorical]
        features = tuple(
            [float(v) if type(v) in _NUMBER and v - v == 0 else None for v in nums]  # type: ignore[operator,arg-type]
            + [None if v is None or type(v) in (dict, list) else (v if type(v) is str else str(v)) for v in cats]
        )
        latency = self.get_latency(obj)
        live_version = self.get_version(obj)
        feat_version = self.get_feature_version(obj)
        parent = self._live_parent(obj)
        has_live = self._live_key is not None and type(parent) is dict and self._live_key in parent
        return Request(
            msg.source,
            msg.part,
            msg.offset,
            rid if type(rid) is str else str(rid),
            t_us,
            reason,
            segs,
            features,
            model_input,
            None if feat_version is None else str(feat_version),
            parent[self._live_key] if has_live else None,
            float(latency) if type(latency) in _NUMBER else None,
            None if live_version is None else str(live_version),
            has_live,
        )
