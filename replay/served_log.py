"""The serving side of a canary analysis: how a Python model server writes its inference log,
one record per answered request (schemas/served.py, schemas/served.v1.schema.json), to a Kafka
topic or a JSONL file. A model server wraps each answer:

    log = InferenceLog.to_kafka("kafka:9092", "inference-log", model_version="churn-v7")
    t0 = time.perf_counter()
    try:
        answer = model.predict(features)
        log.answered(request_id, features, answer, (time.perf_counter() - t0) * 1000, segments={"region": region})
    except Exception:
        log.answered(request_id, features, None, (time.perf_counter() - t0) * 1000, status="error", segments=...)
        raise

The producer is kafka-python's, asynchronous and batched (a record costs the server a dict and
an enqueue); the record's key is the request id, its timestamp the answer's time."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson


def served_record(
    request_id: str | None,
    model_version: str,
    features: dict[str, Any] | None,
    output: Any,
    latency_ms: float,
    status: str = "ok",
    segments: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """One inference-log record in the default layout of `[served]`."""
    when = at or datetime.now(UTC)
    return {
        "request_id": request_id,
        "model_version": model_version,
        "event_time": when.isoformat().replace("+00:00", "Z"),
        "latency_ms": round(latency_ms, 3),
        "status": status,
        "segments": segments or {},
        "input": features,
        "output": output,
    }


class InferenceLog:
    """Writes a serving instance's inference-log records: to Kafka (`to_kafka`) or a JSONL file
    (`to_file`, for tests and recordings). Thread-safe; `close` flushes."""

    def __init__(self, model_version: str, producer: Any = None, topic: str | None = None, file: BinaryIO | None = None) -> None:
        self.model_version = model_version
        self.producer, self.topic, self.file = producer, topic, file
        self._lock = threading.Lock()

    @classmethod
    def to_kafka(cls, bootstrap: str, topic: str, model_version: str, **producer: Any) -> InferenceLog:
        from kafka import KafkaProducer

        settings = {"linger_ms": 20, "acks": 1, **producer}
        return cls(model_version, KafkaProducer(bootstrap_servers=bootstrap, **settings), topic)

    @classmethod
    def to_file(cls, path: Path, model_version: str) -> InferenceLog:
        return cls(model_version, file=path.open("ab"))

    def answered(
        self,
        request_id: str | None,
        features: dict[str, Any] | None,
        output: Any,
        latency_ms: float,
        status: str = "ok",
        segments: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        rec = served_record(request_id, self.model_version, features, output, latency_ms, status, segments, at)
        value = orjson.dumps(rec)
        if self.producer is not None:
            ts = int((at or datetime.now(UTC)).timestamp() * 1000)
            self.producer.send(
                self.topic, key=None if request_id is None else str(request_id).encode(), value=value, timestamp_ms=ts
            )
        else:
            assert self.file is not None
            with self._lock:
                self.file.write(value + b"\n")

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush()
            self.producer.close()
        if self.file is not None:
            self.file.close()
