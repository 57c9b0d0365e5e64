"""The Kafka sources on librdkafka (confluent-kafka), chosen with `[source] client = "librdkafka"`.

Why a second client: kafka-python fetches, checks and parses every record in Python, holding
the GIL for about as long as the rest of the replay's main thread needs a message, so at full
sampling the main thread is bound by the consumer. librdkafka does that work in C on its own
threads; the main thread only picks finished messages off a queue (bench/replay_bench.py prints
the replay's rate on both clients). kafka-python stays the default: the sources below behave
the same (same coordinates, the same resume from the store's checkpoints, commits only of
stored offsets), and the Kafka tests that read, resume, commit and ride out broker outages run
on both.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from shadowdiff.replay.messages import FileRecord, PartitionBatch
from shadowdiff.replay.sources import Checkpoints, log_failed_commit, progress_bar, window_millis
from shadowdiff.schemas.config import KafkaSource

log = logging.getLogger(__name__)
_TIMEOUT_S = 10.0  # metadata and offset lookups
_NO_TIMESTAMP = -1


def _conf(spec: KafkaSource, group: str | None, **extra: object) -> dict[str, object]:
    return {
        "bootstrap.servers": spec.bootstrap,
        # librdkafka needs a group id even for assigned partitions; without `group` nothing is
        # ever committed to it
        "group.id": group or "shadowdiff-window",
        "enable.auto.commit": False,  # offsets are committed only after the DuckDB commit
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "check.crcs": True,
        "max.partition.fetch.bytes": max(1 << 20, spec.max_message_bytes * 2),
        # bounded prefetch: memory stays flat however long the topic; a queue of a few batches'
        # bytes keeps the consumer ahead of the replay, and more only adds to its peak RSS
        "fetch.max.bytes": 16 << 20,
        "queued.max.messages.kbytes": 8 << 10,
        # a partition whose prefetch queue is full is fetched again after this long; the
        # default (1 s) left the queue empty for most of each second at full speed
        "fetch.queue.backoff.ms": 5,
        "statistics.interval.ms": 1000,  # broker states for broker_connected()
        **extra,
    }


class _Consumer:
    """A confluent-kafka Consumer and what its callbacks tell: the brokers' states (from the
    statistics) and failed commits. Callbacks run inside consume(), on the polling thread."""

    def __init__(self, conf: dict[str, object]) -> None:
        self._brokers_up: bool | None = None
        self._lock = threading.Lock()
        self.consumer = Consumer(
            {**conf, "stats_cb": self._on_stats, "on_commit": self._on_commit, "error_cb": self._on_error},
            logger=log,
        )

    def _on_stats(self, text: str) -> None:
        brokers = orjson.loads(text).get("brokers", {})
        # bootstrap entries (nodeid -1) stay down once the cluster's own brokers are known
        states = [b.get("state") for b in brokers.values() if b.get("nodeid", -1) >= 0]
        with self._lock:
            self._brokers_up = any(s == "UP" for s in states) if states else False

    @staticmethod
    def _on_commit(err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            log_failed_commit(err)

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            with self._lock:
                self._brokers_up = False
        log.warning("kafka client: %s", err)

    def broker_connected(self) -> bool | None:
        with self._lock:
            return self._brokers_up

    def consume(self, max_records: int, timeout_ms: int) -> tuple[dict[int, list[FileRecord]], set[int]]:
        """Records by partition (one topic per consumer) and the partitions that reported
        their end; an error other than a partition's end is logged and skipped."""
        by_part: dict[int, list[FileRecord]] = {}
        at_end: set[int] = set()
        # what is queued now, else wait for the first message: consume() alone would wait for
        # `max_records` until the timeout (kafka-python's poll returns what it has)
        msgs = self.consumer.consume(max_records, 0)
        if not msgs:
            msgs = self.consumer.consume(1, timeout_ms / 1000)
            if msgs and max_records > 1:
                msgs.extend(self.consumer.consume(max_records - 1, 0))
        # a message without an error always has its partition and offset: typed as Any, not as
        # the stubs' Optionals, to keep checks out of the per-message loop
        m: Any
        new = tuple.__new__  # a NamedTuple's own __new__ is a Python-level call, a message each
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
                elif err.fatal():
                    raise KafkaException(err)
                else:
                    log.warning("kafka consume: %s", err)
                continue
            kind, ts = m.timestamp()
            part = m.partition()
            recs = by_part.get(part)
            if recs is None:
                recs = by_part[part] = []
            recs.append(new(FileRecord, (m.offset(), m.key(), m.value(), ts if kind else _NO_TIMESTAMP, m.headers() or ())))
        return by_part, at_end

    def commit(self, topic: str, positions: Checkpoints) -> None:
        """Commit the offsets of rows already stored in DuckDB, asynchronously: a failure is
        logged by the callback, never raised (the rows are kept, a restart resumes from the
        store's checkpoints and a re-read is deduplicated), and an unreachable broker never
        blocks the replay."""
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items() if t == topic]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as err:
            log_failed_commit(err)

    def close(self) -> None:
        self.consumer.close()


class RdKafkaLive:
    """Tails a topic in a consumer group: workers in the same group share the partitions."""

    def __init__(self, spec: KafkaSource, checkpoints: Checkpoints, member: str | None = None) -> None:
        self.spec = spec
        self._checkpoints = dict(checkpoints)
        # static membership (KIP-345): a worker restarted under the same `member` takes its
        # partitions back at once, instead of waiting out its killed self's session timeout
        extra = {"group.instance.id": member} if member else {}
        self._client = _Consumer(_conf(spec, spec.group, **extra))
        self.consumer = self._client.consumer
        self.consumer.subscribe([spec.topic], on_assign=self._on_assign)

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Resume where the store says when that is past the group's committed offset (the
        DuckDB commit happened, the Kafka commit was lost). Runs inside consume(), on the main
        thread, so the lookup may block."""
        stored = {tp.partition: self._checkpoints.get((tp.topic, tp.partition)) for tp in partitions}
        resumed: dict[tuple[str, int], int] = {}
        if any(o is not None for o in stored.values()):
            try:
                committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=_TIMEOUT_S)}
            except KafkaException as err:
                # the store's checkpoint is safe to resume from: every row below it is stored
                log.warning("committed offsets unknown (%s); resuming from the store's checkpoints", err)
                committed = {}
            for tp in partitions:
                s = stored[tp.partition]
                if s is not None and s > committed.get(tp.partition, -1):
                    tp.offset = s
                    resumed[(tp.topic, tp.partition)] = s
        consumer.assign(partitions)
        # the lost commit is made again: a partition with nothing left to read would otherwise
        # keep its old committed offset (and the group its false lag) for as long as it is idle
        self._client.commit(self.spec.topic, resumed)

    def poll(self, max_records: int, timeout_ms: int) -> list[PartitionBatch]:
        by_part, _ = self._client.consume(max_records, timeout_ms)
        return [PartitionBatch(self.spec.topic, p, recs) for p, recs in by_part.items()]

    @property
    def finished(self) -> bool:
        return False

    def broker_connected(self) -> bool | None:
        return self._client.broker_connected()

    def lag(self) -> int | None:
        """Messages behind the end of the assigned partitions, from what the last fetches told
        (no broker request); None until every assigned partition has been fetched once."""
        assigned = self.consumer.assignment()
        if not assigned:  # not in the group yet: nothing is known, certainly not "caught up"
            return None
        total = 0
        for tp in self.consumer.position(assigned):
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high < 0 or tp.offset < 0:
                return None
            total += max(0, high - tp.offset)
        return total

    def commit(self, positions: Checkpoints) -> None:
        self._checkpoints.update(positions)
        self._client.commit(self.spec.topic, positions)

    def close(self) -> None:
        self._client.close()


class RdKafkaWindow:
    """Replays [start, end) of a topic by event timestamp: offsets for times, stop at the
    window's end offsets. Partitions are assigned, not subscribed: a window is a fixed job."""

    def __init__(self, spec: KafkaSource, checkpoints: Checkpoints) -> None:
        self.spec = spec
        self._client = _Consumer(_conf(spec, spec.group, **{"enable.partition.eof": True}))
        self.consumer = self._client.consumer
        meta = self.consumer.list_topics(spec.topic, timeout=_TIMEOUT_S).topics.get(spec.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise LookupError(f"topic {spec.topic!r} not found on {spec.bootstrap}")
        parts = sorted(meta.partitions)
        t1, t2 = window_millis(spec)
        starts = self.consumer.offsets_for_times([TopicPartition(spec.topic, p, t1) for p in parts], timeout=_TIMEOUT_S)
        ends = self.consumer.offsets_for_times([TopicPartition(spec.topic, p, t2) for p in parts], timeout=_TIMEOUT_S)
        self.end: dict[int, int] = {}
        self.window_start: dict[str, int] = {}
        self._open: set[int] = set()
        assign: list[TopicPartition] = []
        total = 0
        for p, s_tp, e_tp in zip(parts, starts, ends, strict=True):
            # no message at or after the time (OFFSET_END): the partition's end
            high = 0
            if min(s_tp.offset, e_tp.offset) < 0:
                high = self.consumer.get_watermark_offsets(TopicPartition(spec.topic, p), timeout=_TIMEOUT_S)[1]
            s = s_tp.offset if s_tp.offset >= 0 else high
            e = e_tp.offset if e_tp.offset >= 0 else high
            resume = max(s, checkpoints.get((spec.topic, p), s))
            self.end[p] = e
            self.window_start[f"{spec.topic}/{p}"] = s
            total += max(0, e - resume)
            if resume < e:
                self._open.add(p)
                assign.append(TopicPartition(spec.topic, p, resume))
        if assign:
            self.consumer.assign(assign)
        self.bar = progress_bar(spec, total)

    @property
    def window_end(self) -> dict[str, int]:
        return {f"{self.spec.topic}/{p}": o for p, o in self.end.items()}

    def poll(self, max_records: int, timeout_ms: int) -> list[PartitionBatch]:
        if not self._open:
            return []
        by_part, at_end = self._client.consume(max_records, timeout_ms)
        out: list[PartitionBatch] = []
        closing: list[int] = []
        for p, recs in by_part.items():
            if p not in self._open:  # already past its end: prefetched, never handed on
                continue
            limit = self.end[p]
            if recs[-1].offset >= limit - 1:
                recs = [r for r in recs if r.offset < limit]
                closing.append(p)
            if recs:
                out.append(PartitionBatch(self.spec.topic, p, recs))
        # a partition's end can lie past its last record (a transaction marker, a compacted
        # tail): the high watermark reached closes it as well
        closing.extend(p for p in at_end if p in self._open)
        if closing:
            self._close_partitions(closing)
        if self.bar is not None:
            self.bar.update(sum(len(b.records) for b in out))
        return out

    def _close_partitions(self, parts: list[int]) -> None:
        tps = [TopicPartition(self.spec.topic, p) for p in set(parts) & self._open]
        self._open.difference_update(parts)
        if tps:
            self.consumer.pause(tps)

    @property
    def finished(self) -> bool:
        return not self._open

    def broker_connected(self) -> bool | None:
        return self._client.broker_connected()

    def commit(self, positions: Checkpoints) -> None:
        if self.spec.group:
            self._client.commit(self.spec.topic, positions)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self._client.close()
