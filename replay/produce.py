"""Send a recording (JSONL or Parquet envelopes) to a Kafka topic, as production would have:
each message keyed by a field of the envelope and stamped with its event time, so a time window
replay of the topic selects the same requests the recording holds."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shadowdiff.schemas.envelope import BadMessage, event_time_us, recording
from shadowdiff.schemas.paths import lookup

log = logging.getLogger(__name__)


@dataclass
class ProduceStats:
    sent: int = 0
    unkeyed: int = 0  # no key field in the envelope: sent without a key
    untimed: int = 0  # no readable event time: stamped by the producer
    unreadable: int = 0  # a line that is not a JSON object: sent as it is, so the replay dead-letters it
    seconds: float = 0.0
    first_error: str | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "unkeyed": self.unkeyed,
            "untimed": self.untimed,
            "unreadable": self.unreadable,
            "seconds": round(self.seconds, 3),
            "sent_per_s": round(self.sent / max(self.seconds, 1e-9), 1),
        }


def key_and_time(value: bytes, key_path: str, time_path: str, stats: ProduceStats) -> tuple[bytes | None, int | None]:
    """The message key (text of the key field) and timestamp (event time, ms) of one message.
    Anything unreadable is counted and left to the replay, which dead-letters it with a reason."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        stats.unreadable += 1
        return None, None
    if not isinstance(obj, dict):
        stats.unreadable += 1
        return None, None
    key = lookup(obj, key_path, None) if key_path else None
    if key is None:
        stats.unkeyed += 1
    key_bytes = None if key is None else (key if isinstance(key, str) else orjson.dumps(key).decode()).encode()
    raw_time = lookup(obj, time_path, None) if time_path else None
    stamp: int | None = None
    if raw_time is not None:
        try:
            stamp = event_time_us(raw_time, 0, time_path) // 1000
        except (BadMessage, OverflowError, ValueError):
            stamp = None
    # Kafka timestamps are non-negative milliseconds within a signed 64-bit range
    if stamp is None or not 0 <= stamp < 2**63:
        stats.untimed += 1
        stamp = None
    return key_bytes, stamp


def produce_recording(
    path: Path,
    bootstrap: str,
    topic: str,
    key_path: str = "request_id",
    time_path: str = "event_time",
    rate: float = 0.0,
) -> ProduceStats:
    """Send every message of the recording to `topic`, in order; `rate` > 0 paces it (messages
    per second). Returns the counts once the broker acknowledged every message."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from shadowdiff.schemas.errors import ShadowdiffError

    if not path.exists():
        raise ShadowdiffError(f"recording not found: {path}")
    stats = ProduceStats()
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap.split(","), linger_ms=50, batch_size=256 * 1024, acks="all", max_request_size=16 << 20
        )
    except KafkaError as err:
        raise ShadowdiffError(f"cannot reach Kafka at {bootstrap}: {err}") from err
    t0 = time.monotonic()
    try:
        for _, value in recording(path):
            key, stamp = key_and_time(value, key_path, time_path, stats)
            producer.send(topic, key=key, value=value, timestamp_ms=stamp)
            stats.sent += 1
            if rate > 0:
                ahead = stats.sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)  # a paced live topic, not a bulk load
        producer.flush()
    except KafkaError as err:
        raise ShadowdiffError(f"producing to {topic} failed after {stats.sent} messages: {err}") from err
    finally:
        producer.close()
    stats.seconds = time.monotonic() - t0
    return stats
