"""The served-traffic worker (`shadowdiff canary`): reads the serving instances' inference-log
records (schemas/served.py) into `served-<worker>.duckdb` and publishes them as checkpoint
exports under `<run>/served-exports/<worker>/`, exactly once (replay/records.py). The codec
reads a record's fields through the `[served]` paths, with the same payload readers (JSON, Avro,
Protobuf) and time rules as request envelopes; a record it cannot read is a dead letter with
the reason, and the run goes on."""

from __future__ import annotations

import math
import threading
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa

from shadowdiff.replay.formats import payload_reader
from shadowdiff.replay.models.base import read_output
from shadowdiff.replay.records import AfterBatch, RecordKind, RecordStats, keyed_columns, run_records
from shadowdiff.schemas import SERVED_STORE_SCHEMA_VERSION, served_store_ddl
from shadowdiff.schemas.config import ServedRunConfig
from shadowdiff.schemas.envelope import BadMessage, Payload, decode_object, event_time_us
from shadowdiff.schemas.layout import SERVED_EXPORT_TABLES, RunLayout
from shadowdiff.schemas.paths import getter
from shadowdiff.schemas.records import DeadLetter
from shadowdiff.schemas.records import DeadLetterReason as R
from shadowdiff.schemas.served import ServedRow

SERVED_EXPORTS = "served-exports"  # the folder under the run (schemas/layout.py)
SERVED_COMPLETE = "served_complete"  # run_meta: the worker read its whole source
_DEAD_RAW_LIMIT = 64 * 1024


class ServedCodec:
    """One inference-log record to a ServedRow, or a DeadLetter naming what is wrong."""

    def __init__(self, cfg: ServedRunConfig, payload: Payload | None = None) -> None:
        spec = self.spec = cfg.served
        self.output_spec = cfg.output
        self.payload = payload
        self.max_bytes = spec.source.max_message_bytes
        self.ok_status = frozenset(spec.ok_status)
        self.segment_fields = cfg.segments.fields
        self.allowed = {k: frozenset(v) for k, v in cfg.segments.allowed.items()}
        self._rid = getter(spec.request_id) if spec.request_id else None
        self._header = spec.version[len("header:") :] if spec.version.startswith("header:") else None
        self._version = None if self._header is not None else getter(spec.version)
        self._time = getter(spec.event_time) if spec.event_time else None
        self._latency = getter(spec.latency_ms) if spec.latency_ms else None
        self._status = getter(spec.status)
        self._segments = getter(spec.segments)
        self._input = getter(spec.input) if spec.input else None
        self._output = getter(spec.output)

    def decode_record(self, source: str, part: int, rec: Any) -> ServedRow | DeadLetter:
        try:
            obj = decode_object(rec.value, self.payload, self.max_bytes)
            return self._row(source, part, rec.offset, obj, rec.timestamp, rec.headers)
        except BadMessage as bad:
            raw = rec.value[:_DEAD_RAW_LIMIT] if rec.value is not None else None
            return DeadLetter(source, part, rec.offset, bad.reason.value, bad.detail, rec.key, raw)

    def _row(self, source: str, part: int, offset: int, obj: dict[str, Any], timestamp_ms: int, headers: Any) -> ServedRow:
        spec = self.spec
        version = self._version(obj) if self._version is not None else _header(headers, self._header or "")
        if version is None or version == "":
            raise BadMessage(R.MISSING_FIELD, f"{spec.version}: required (which model version answered)")
        if type(version) is not str:
            if type(version) is not int:
                raise BadMessage(R.WRONG_TYPE, f"{spec.version}: expected a string, got {type(version).__name__}")
            version = str(version)
        rid = self._rid(obj) if self._rid is not None else None
        if rid is not None and type(rid) not in (str, int):
            raise BadMessage(R.WRONG_TYPE, f"{spec.request_id}: expected a string, got {type(rid).__name__}")
        status = self._status(obj)
        if type(status) is not str or not status:
            raise BadMessage(R.MISSING_FIELD if status is None else R.WRONG_TYPE, f"{spec.status}: expected a status text")
        latency = self._latency(obj) if self._latency is not None else None
        if latency is not None:
            if type(latency) not in (int, float) or not math.isfinite(latency) or latency < 0:
                raise BadMessage(R.OUT_OF_RANGE, f"{spec.latency_ms}: {str(latency)[:40]!r} is not a duration in ms")
            latency = float(latency)
        segs = self._segments(obj)
        if segs is not None and type(segs) is not dict:
            raise BadMessage(R.WRONG_TYPE, f"{spec.segments or '<record>'}: expected an object of segment fields")
        seg_values: dict[str, str | None] = {}
        for name in self.segment_fields:
            raw = None if segs is None else segs.get(name)
            if type(raw) in (dict, list):
                raise BadMessage(R.WRONG_TYPE, f"segment {name}: expected a value, got {type(raw).__name__}")
            value = None if raw is None else str(raw)
            allowed = self.allowed.get(name)
            if allowed is not None and value is not None and value not in allowed:
                raise BadMessage(R.UNKNOWN_SEGMENT, f"segment {name}: {value[:80]!r} is not one of the allowed values")
            seg_values[name] = value
        features = self._input(obj) if self._input is not None else None
        if features is not None and type(features) is not dict:
            raise BadMessage(R.WRONG_TYPE, f"{spec.input}: expected an object of features")
        score = label = None
        ok = status in self.ok_status
        output = self._output(obj)
        if ok and output is not None:
            read = read_output(self.output_spec, output)
            # an answer that does not have the run's shape is counted as unread, not as an error of
            # the model: its score and label stay null, the record still counts for errors and latency
            if read.error is None:
                score, label = read.score, read.label
        t_us = event_time_us(self._time(obj) if self._time is not None else None, timestamp_ms, spec.event_time)
        return ServedRow(
            source,
            part,
            offset,
            None if rid is None else str(rid),
            version,
            t_us,
            latency,
            status,
            ok,
            orjson.dumps(seg_values),
            None if features is None else orjson.dumps(features),
            score,
            label,
        )


def _header(headers: Any, name: str) -> str | None:
    for k, v in headers or ():
        if k == name and v is not None:
            return bytes(v).decode("utf-8", "replace")
    return None


def _served_table(rows: list[tuple[Any, ...]], now: datetime) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            **keyed_columns(cols),
            "request_id": pa.array(cols[3], pa.string()),
            "version": pa.array(cols[4], pa.string()),
            "event_time": pa.array(cols[5], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "latency_ms": pa.array(cols[6], pa.float64()),
            "status": pa.array(cols[7], pa.string()),
            "ok": pa.array(cols[8], pa.bool_()),
            "segments": pa.array([b.decode() for b in cols[9]], pa.string()),
            "input": pa.array([None if b is None else b.decode() for b in cols[10]], pa.string()),
            "score": pa.array(cols[11], pa.float64()),
            "label": pa.array(cols[12], pa.string()),
            "received_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
        }
    )


SERVED_KIND = RecordKind(
    what="served-traffic",
    store=lambda run: RunLayout(run.home, run.id).served_store(run.worker),
    ddl=served_store_ddl(),
    schema_version=SERVED_STORE_SCHEMA_VERSION,
    table="served",
    arrow=_served_table,
    export_tables=SERVED_EXPORT_TABLES,
    export_folder=SERVED_EXPORTS,
    complete_key=SERVED_COMPLETE,
)


def run_served(
    cfg: ServedRunConfig,
    stop: threading.Event | None = None,
    checkpoint_every_s: float = 15.0,
    max_batches: int | None = None,
    after_checkpoint: AfterBatch | None = None,
) -> RecordStats:
    """Read the run's inference logs into its served store until the source ends (a recording
    or a window) or `stop` is set; `after_checkpoint` judges on the writer's connection."""
    codec = ServedCodec(cfg, payload_reader(cfg.served))
    return run_records(cfg.run, cfg.served.source, codec, SERVED_KIND, stop, checkpoint_every_s, max_batches, after_checkpoint)
