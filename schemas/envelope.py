"""The envelope codec: a recorded or produced message to a request row or a DeadLetter, never
raising on bad input. The replay, the reference sample of the judge and `produce` all decode
envelopes through it, so a field, a time or a segment is read the same way wherever it is read
(`replay/columnar.py` is its SQL twin, kept for speed and tested for parity against it).

Hot path. At 100% sampling every message is decoded while the GIL is the bottleneck of the
whole replay, so the decoder is compiled once per run config into one Python function
(`compile_row_decoder`): every field path becomes a direct `dict.get` chain, every feature its
own inlined line, and the result is a plain tuple in `RowLayout` order. Event times stay
integers (microseconds since the epoch, UTC) into Arrow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from shadowdiff.schemas.config import EnvelopeMapping, FeatureSpec, RunConfig, SegmentSpec
from shadowdiff.schemas.records import EVENT_TIME_MAX_US, MAX_INPUT_DEPTH, DeadLetter, RawMessage
from shadowdiff.schemas.records import DeadLetterReason as R

_DEAD_RAW_LIMIT = 64 * 1024  # keep this much of an oversized message: enough to diagnose it
_HOUR_US = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# A decoded request is a tuple (cheaper to build than any object): these fixed fields, then one
# value per segment, one per feature, and the trailing fields of `RowLayout`.
SOURCE, PART, OFFSET, REQUEST_ID, EVENT_TIME_US, SAMPLED_REASON = range(6)
Row = tuple[Any, ...]


class BadMessage(Exception):
    def __init__(self, reason: R, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class RowLayout:
    """Where each field sits in a decoded row: the six fixed fields above, one value per
    segment, one per feature, then the trailing fields in the order set here (the compiled
    decoder returns them in that order)."""

    def __init__(self, segment_names: tuple[str, ...], numeric: tuple[str, ...], categorical: tuple[str, ...]) -> None:
        self.segment_names = segment_names  # declared fields, then the hour bucket if configured
        self.numeric = numeric
        self.categorical = categorical
        self.segments = slice(6, 6 + len(segment_names))
        self.features = slice(self.segments.stop, self.segments.stop + len(numeric) + len(categorical))
        start = self.features.stop
        (
            self.model_input,
            self.feature_version,
            self.has_live_output,
            self.live_output,
            self.live_latency_ms,
            self.live_model_version,
        ) = range(start, start + 6)
        self.width = start + 6

    def segments_of(self, row: Row) -> dict[str, str | None]:
        return dict(zip(self.segment_names, row[self.segments], strict=True))


def decode_object(value: bytes | None, payload: Payload | None, max_bytes: int) -> dict[str, Any]:
    """One record's top-level object, decoded by `payload` (None: JSON); BadMessage for a
    tombstone, an oversized value, bytes that do not decode, or a top level that is not an
    object. For the records read beside the envelopes (outcomes, served traffic); the envelope
    codec has its own inlined copy on the replay's hot path."""
    if value is None:
        raise BadMessage(R.MALFORMED_JSON if payload is None else R.MALFORMED_PAYLOAD, "empty value (tombstone)")
    if len(value) > max_bytes:
        raise BadMessage(R.OVERSIZED, f"{len(value)} bytes > max_message_bytes {max_bytes}")
    if payload is None:
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as err:
            raise BadMessage(R.MALFORMED_JSON, str(err)[:300]) from err
    else:
        obj = payload(value)  # raises BadMessage itself
    if type(obj) is not dict:
        raise BadMessage(R.NOT_AN_OBJECT, f"top level is {type(obj).__name__}")
    return obj


def event_time_us(raw: Any, timestamp_ms: int, path: str) -> int:
    """Microseconds since the epoch from a number (milliseconds) or an RFC 3339 string; the
    record's timestamp when the envelope has none. Raises BadMessage for other types and for
    times outside 1970..2200."""
    if raw is None:
        return timestamp_ms * 1000
    t = type(raw)
    if t is int or t is float:
        if not 0 <= raw < EVENT_TIME_MAX_US // 1000:
            raise BadMessage(R.OUT_OF_RANGE, f"{path}: {raw!r} is not an epoch in milliseconds between 1970 and 2200")
        return int(raw * 1000)
    if t is str:
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError as err:
            raise BadMessage(R.WRONG_TYPE, f"{path}: not RFC 3339: {raw[:60]!r}") from err
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            # exact integer microseconds: dt.timestamp() is a float and can land 1 µs short
            us = (dt - _EPOCH) // _MICROSECOND
        except OverflowError as err:  # an offset that crosses year 1 or 9999
            raise BadMessage(R.OUT_OF_RANGE, f"{path}: {raw[:60]!r} is not between 1970 and 2200") from err
        if not 0 <= us < EVENT_TIME_MAX_US:
            raise BadMessage(R.OUT_OF_RANGE, f"{path}: {raw[:60]!r} is not between 1970 and 2200")
        return us
    raise BadMessage(R.WRONG_TYPE, f"{path}: expected string or number, got {t.__name__}")


def too_deep(value: Any, limit: int = MAX_INPUT_DEPTH) -> bool:
    """Whether `value` nests containers deeper than `limit` levels (itself counted as one)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        children = v.values() if type(v) is dict else v
        stack.extend((c, depth + 1) for c in children if type(c) is dict or type(c) is list)
    return False


def _text(v: Any) -> str | None:
    """A segment value, version or categorical feature as text (None stays None)."""
    return None if v is None else (v if type(v) is str else str(v))


def _category(v: Any) -> str | None:
    return None if v is None or type(v) is dict or type(v) is list else (v if type(v) is str else str(v))


def _number(v: Any) -> float | None:
    # a mistyped or non-finite feature is stored as NULL (the quality checks count null
    # spikes); bool is not a number here
    return float(v) if (type(v) is float or type(v) is int) and v - v == 0 else None


def _walk_expr(var: str, path: str) -> str:
    """Python source reading dotted `path` from `var` (None when absent), as schemas.paths
    does: dict keys, and digit steps as list indexes."""
    expr = var
    for step in path.split(".") if path else []:
        key = repr(step)
        if step.isdigit():
            i = int(step)
            expr = f"(_v.get({key}) if type(_v := {expr}) is dict else (_v[{i}] if type(_v) is list and {i} < len(_v) else None))"
        else:
            expr = f"(_v.get({key}) if type(_v := {expr}) is dict else None)"
    return expr


def compile_row_decoder(
    env: EnvelopeMapping, feats: FeatureSpec, segs: SegmentSpec, name: str = "run"
) -> tuple[RowLayout, Callable[..., Row]]:
    """`decode_row(obj, source, part, offset, timestamp_ms, reason) -> Row`, raising
    BadMessage; `obj` is an already parsed JSON object. `name` labels the compiled code."""
    hb = segs.hour_buckets
    layout = RowLayout(tuple(segs.names()), tuple(feats.numeric), tuple(feats.categorical))
    ns: dict[str, Any] = {
        "BadMessage": BadMessage,
        "R": R,
        "event_time_us": event_time_us,
        "too_deep": too_deep,
        "_MAX_MS": EVENT_TIME_MAX_US // 1000,
        "_text": _text,
        "_category": _category,
        "_number": _number,
        "_HOUR_US": _HOUR_US,
        "_hour_bucket": {h: b for b, hs in hb.buckets.items() for h in hs} if hb else {},
        "_allowed": {k: frozenset(v) for k, v in segs.allowed.items()},
        "_NOT_CONFIGURED": " not in the configured values",
    }
    rid_path, input_path, time_path = env.request_id, env.input, env.event_time
    lines = [
        "def decode_row(obj, source, part, offset, timestamp_ms, reason):",
        f"    rid = {_walk_expr('obj', rid_path)}",
        "    if rid is None or rid == '':",
        f"        raise BadMessage(R.MISSING_FIELD, {rid_path + ': required'!r})",
        "    if type(rid) is not str:",
        "        if type(rid) is not int:",
        f"            raise BadMessage(R.WRONG_TYPE, {rid_path + ': expected string, got '!r} + type(rid).__name__)",
        "        rid = str(rid)",
        f"    inp = {_walk_expr('obj', input_path)}",
        "    if inp is None:",
        f"        raise BadMessage(R.MISSING_FIELD, {input_path + ': required'!r})",
        "    if type(inp) is not dict:",
        f"        raise BadMessage(R.WRONG_TYPE, {input_path + ': expected object, got '!r} + type(inp).__name__)",
        # most inputs are flat: the depth is walked only when a value is itself a container
        "    for v in inp.values():",
        "        if type(v) is dict or type(v) is list:",
        "            if too_deep(inp):",
        f"                raise BadMessage(R.TOO_DEEP, {f'{input_path}: nested deeper than {MAX_INPUT_DEPTH} levels'!r})",
        "            break",
        f"    t = {_walk_expr('obj', time_path)}",
        # the common case inlined: an int of milliseconds within range; anything else is checked
        "    t_us = timestamp_ms * 1000 if t is None else (t * 1000 if type(t) is int and 0 <= t < _MAX_MS else "
        f"event_time_us(t, timestamp_ms, {time_path!r}))",
        f"    seg = {_walk_expr('obj', env.segments)}",
        "    if type(seg) is not dict:",
        "        seg = {}",
    ]
    seg_vars = []
    for k, name in enumerate(segs.fields):
        lines.append(f"    s{k} = _text(seg.get({name!r}))")
        seg_vars.append(f"s{k}")
    if hb is not None:
        lines.append("    s_hour = _hour_bucket.get((t_us // _HOUR_US) % 24)")
        seg_vars.append("s_hour")
    # the allowed values are checked in config order, so the first bad one is the one named
    for name in segs.allowed:
        if name in segs.fields or (hb is not None and name == hb.name):
            var = f"s{segs.fields.index(name)}" if name in segs.fields else "s_hour"
            lines += [
                f"    if {var} is not None and {var} not in _allowed[{name!r}]:",
                f"        raise BadMessage(R.UNKNOWN_SEGMENT, {name + '='!r} + repr({var}[:80]) + _NOT_CONFIGURED)",
            ]
    feat_vars = []
    for k, name in enumerate(feats.numeric):
        lines.append(f"    n{k} = inp.get({name!r})")
        lines.append(f"    n{k} = n{k} if type(n{k}) is float and n{k} - n{k} == 0 else _number(n{k})")
        feat_vars.append(f"n{k}")
    for k, name in enumerate(feats.categorical):
        lines.append(f"    c{k} = inp.get({name!r})")
        lines.append(f"    c{k} = c{k} if type(c{k}) is str else _category(c{k})")
        feat_vars.append(f"c{k}")
    lines += [
        f"    latency = {_walk_expr('obj', env.live_latency_ms)}",
        "    latency = float(latency) if type(latency) is float or type(latency) is int else None",
        f"    version = _text({_walk_expr('obj', env.model_version)})",
        f"    feature_version = _text({_walk_expr('obj', env.feature_version)})",
    ]
    live_steps = env.live_output.split(".") if env.live_output else []
    if live_steps:
        lines += [
            f"    parent = {_walk_expr('obj', '.'.join(live_steps[:-1]))}",
            f"    has_live = type(parent) is dict and {live_steps[-1]!r} in parent",
            f"    live = parent[{live_steps[-1]!r}] if has_live else None",
        ]
    else:
        lines += ["    has_live = False", "    live = None"]
    fields = ["source", "part", "offset", "rid", "t_us", "reason", *seg_vars, *feat_vars]
    fields += ["inp", "feature_version", "has_live", "live", "latency", "version"]  # RowLayout's trailing order
    lines.append(f"    return ({', '.join(fields)},)")
    exec(compile("\n".join(lines), f"<shadowdiff row decoder {name}>", "exec"), ns)  # noqa: S102
    return layout, ns["decode_row"]


Payload = Callable[[bytes], Any]  # a message's bytes to its envelope object; raises BadMessage


class Decoder:
    """`payload`: how a message's bytes become the envelope object, for formats other than JSON
    (replay/formats.py); the field mapping after it is the same for every format."""

    def __init__(
        self,
        env: EnvelopeMapping,
        feats: FeatureSpec,
        segs: SegmentSpec,
        max_bytes: int,
        name: str = "run",
        payload: Payload | None = None,
    ) -> None:
        self.env = env
        self.max_bytes = max_bytes
        self.payload = payload
        self.layout, self._decode_row = compile_row_decoder(env, feats, segs, name)

    @classmethod
    def for_run(cls, cfg: RunConfig, payload: Payload | None = None) -> Decoder:
        return cls(cfg.envelope, cfg.features, cfg.segments, cfg.source.max_message_bytes, cfg.run.id, payload)

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
            return self.dead(msg, R.MALFORMED_JSON if self.payload is None else R.MALFORMED_PAYLOAD, "empty value (tombstone)")
        try:
            obj = orjson.loads(msg.value) if self.payload is None else self.payload(msg.value)
        except orjson.JSONDecodeError as err:
            return self.dead(msg, R.MALFORMED_JSON, str(err)[:300])
        except BadMessage as bad:
            return self.dead(msg, bad.reason, bad.detail)
        if type(obj) is not dict:
            return self.dead(msg, R.NOT_AN_OBJECT, f"top level is {type(obj).__name__}")
        return obj

    def decode(self, msg: RawMessage, obj: dict[str, Any], reason: str) -> Row | DeadLetter:
        try:
            return self._decode_row(obj, msg.source, msg.part, msg.offset, msg.timestamp_ms, reason)
        except BadMessage as bad:
            return self.dead(msg, bad.reason, bad.detail)

    def decode_record(
        self, source: str, part: int, offset: int, key: bytes | None, value: bytes | None, timestamp_ms: int, reason: str
    ) -> Row | DeadLetter:
        """Size check, parse and decode in one call: the fast path's whole work a message. A
        RawMessage is built only for a dead letter."""
        if self.payload is not None:
            msg = RawMessage(source, part, offset, key, value, timestamp_ms)
            parsed = self.check_size(msg) or self.parse(msg)
            if isinstance(parsed, DeadLetter):
                return parsed
            return self.decode(msg, parsed, reason)
        if value is not None and len(value) <= self.max_bytes:
            try:
                obj = orjson.loads(value)
            except orjson.JSONDecodeError as err:
                return self.dead(RawMessage(source, part, offset, key, value, timestamp_ms), R.MALFORMED_JSON, str(err)[:300])
            if type(obj) is dict:
                try:
                    return self._decode_row(obj, source, part, offset, timestamp_ms, reason)
                except BadMessage as bad:
                    return self.dead(RawMessage(source, part, offset, key, value, timestamp_ms), bad.reason, bad.detail)
        msg = RawMessage(source, part, offset, key, value, timestamp_ms)
        too_big = self.check_size(msg)
        if too_big is not None:
            return too_big
        parsed = self.parse(msg)
        assert type(parsed) is DeadLetter  # a dict would have been decoded above
        return parsed


def recording(path: Path, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(number, message) of each envelope of a recording from number `start` on: a JSONL line
    as it is (blank lines skipped, numbers are line numbers), a Parquet row as JSON (numbers
    are row numbers). The replay's file source, `produce` and the judge's reference sample all
    read recordings through this one reader."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                if n >= start:
                    # orjson writes timestamps as RFC 3339 text, which the decoder reads as event times
                    yield n, orjson.dumps(row, default=str)
                n += 1
        return
    with path.open("rb") as fh:
        for n, line in enumerate(fh):
            if n < start:
                continue
            value = line.rstrip(b"\r\n")
            if value.strip():
                yield n, value
