"""Sources of raw messages: a recorded file (JSONL / Parquet), a live Kafka consumer group, or a
historical Kafka window (offsets for times T1..T2). Each resumes from the checkpoints stored
with the rows, so the store, not Kafka, is the source of truth for what was processed."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from shadowdiff.replay.messages import FileRecord, PartitionBatch
from shadowdiff.schemas.config import FileSource, KafkaSource
from shadowdiff.schemas.envelope import recording

log = logging.getLogger(__name__)

Checkpoints = Mapping[tuple[str, int], int]  # (source, part) -> next offset to read
_COMMIT_TIMEOUT_MS = 10_000


class Source(Protocol):
    def poll(self, max_records: int, timeout_ms: int) -> list[PartitionBatch]: ...

    @property
    def finished(self) -> bool: ...

    def commit(self, positions: Checkpoints) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class WindowSource(Protocol):
    """A historical Kafka window: the offsets it starts and ends at, stored with the run."""

    spec: KafkaSource

    @property
    def window_start(self) -> dict[str, int]: ...

    @property
    def window_end(self) -> dict[str, int]: ...


def window_millis(spec: KafkaSource) -> tuple[int, int]:
    """A window's start and end as Kafka timestamps (ms)."""
    assert spec.start is not None
    assert spec.end is not None
    return int(spec.start.timestamp() * 1000), int(spec.end.timestamp() * 1000)


def progress_bar(spec: KafkaSource, total: int) -> Any:
    """A window's progress bar when the config asks for one, else None."""
    if not spec.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="msg", desc=f"window {spec.topic}", mininterval=1.0)


class RecordedFile:
    """JSONL (one envelope per line) or Parquet (one envelope per row) recording.
    Coordinates: (path, 0, line or row number)."""

    def __init__(self, spec: FileSource, checkpoints: Checkpoints) -> None:
        self.path = spec.path
        if not self.path.exists():
            raise FileNotFoundError(f"recording not found: {self.path}")
        self.name = str(self.path)
        self._start = checkpoints.get((self.name, 0), 0)
        self._rows = self._iter()
        self._done = False

    def _iter(self) -> Iterator[FileRecord]:
        ts = int(self.path.stat().st_mtime * 1000)  # a message's timestamp when its envelope has no time
        for n, value in recording(self.path, self._start):
            yield FileRecord(n, None, value, ts)

    def poll(self, max_records: int, timeout_ms: int) -> list[PartitionBatch]:
        out: list[FileRecord] = []
        for rec in self._rows:
            out.append(rec)
            if len(out) >= max_records:
                return [PartitionBatch(self.name, 0, out)]
        self._done = True
        return [PartitionBatch(self.name, 0, out)] if out else []

    @property
    def finished(self) -> bool:
        return self._done

    def commit(self, positions: Checkpoints) -> None:
        """Files have no broker: the store's checkpoints are the only record."""

    def close(self) -> None:
        self._rows = iter(())


def _consumer(spec: KafkaSource, group: str | None, **extra: object):  # type: ignore[no-untyped-def]
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=spec.bootstrap.split(","),
        group_id=group,
        enable_auto_commit=False,  # offsets are committed only after the DuckDB commit
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max(1 << 20, spec.max_message_bytes * 2),
        fetch_max_bytes=16 << 20,  # bounded prefetch: memory stays flat however long the topic
        check_crcs=True,
        **extra,
    )


def broker_connected(consumer: Any) -> bool | None:
    """Whether the consumer holds a connection to at least one broker of the cluster; None
    when this kafka-python does not say. A refused or dropped broker reads False at once; a
    hung one only after kafka-python's request timeout closes its connection."""
    # kafka-python has no public call for this: its client's `connected(node_id)` (2.x and
    # 3.x), over the brokers of the metadata it holds
    client = getattr(consumer, "_client", None)
    try:
        nodes = [getattr(b, "node_id", None) or getattr(b, "nodeId", None) for b in client.cluster.brokers()]  # type: ignore[union-attr]
        return any(client.connected(n) for n in nodes if n is not None)  # type: ignore[union-attr]
    except Exception:  # an internal API that moved: the outage lines are skipped, nothing else
        return None


def log_failed_commit(err: object) -> None:
    """A commit of stored rows' offsets that failed: said, never raised (both clients)."""
    log.warning("offset commit failed after the rows were stored (%s); a re-read is deduplicated", err)


def _commit_stored(consumer: Any, positions: Checkpoints) -> None:
    """Commit the offsets of rows already stored in DuckDB. A failure is logged, never raised:
    the rows are kept, a restart resumes from the store's checkpoints and a re-read is
    deduplicated (a rebalance may have moved the partitions meanwhile). Bounded: with the
    broker gone kafka-python would wait for it forever, and a SIGTERM during an outage would
    never exit."""
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata, TopicPartition

    offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in positions.items()}
    if not offsets:
        return
    try:
        consumer.commit(offsets, timeout_ms=_COMMIT_TIMEOUT_MS)
    except KafkaError as err:
        log_failed_commit(err)


def _batches(records: dict[Any, Any], end: Mapping[object, int] | None = None) -> list[PartitionBatch]:
    """Per-partition record lists as polled, trimmed at a window's end offset."""
    out: list[PartitionBatch] = []
    for tp, recs in records.items():
        limit = end.get(tp) if end is not None else None
        if limit is not None and recs and recs[-1].offset >= limit:
            recs = [r for r in recs if r.offset < limit]
        if recs:
            out.append(PartitionBatch(tp.topic, tp.partition, recs))
    return out


class KafkaLive:
    """Tails a topic in a consumer group: workers in the same group share the partitions."""

    def __init__(self, spec: KafkaSource, checkpoints: Checkpoints, member: str | None = None) -> None:
        from kafka import ConsumerRebalanceListener

        self.spec = spec
        self._checkpoints = dict(checkpoints)
        # static membership (KIP-345): a worker restarted under the same `member` takes its
        # partitions back at once, instead of waiting out its killed self's session timeout
        self.consumer = _consumer(spec, spec.group, group_instance_id=member)
        self._newly_assigned: set[object] = set()
        outer = self

        class _Resume(ConsumerRebalanceListener):
            # runs on kafka-python's IO thread, where blocking calls are refused: only note the
            # partitions here, and reconcile them with the store in poll()
            def on_partitions_revoked(self, revoked: object) -> None:
                """A batch may be in flight; if its partitions move to another worker, its
                Kafka commit fails (logged), its rows are stored all the same, and the other
                worker's re-read lands in another store file, deduplicated when judging."""

            def on_partitions_assigned(self, assigned: list) -> None:
                outer._newly_assigned.update(assigned)

        # the group's leader assigns partitions from its own metadata: fetched before joining,
        # so the join does not race it (a leader without the topic's partitions assigns
        # nothing, and a static member is not assigned again when the metadata comes)
        self.consumer.partitions_for_topic(spec.topic)
        self.consumer.subscribe([spec.topic], listener=_Resume())

    def _resume_targets(self) -> dict[tuple[str, int], int]:
        """For partitions just assigned: where the store says to resume, when that is past the
        group's committed offset (the DuckDB commit happened, the Kafka commit was lost)."""
        targets: dict[tuple[str, int], int] = {}
        while self._newly_assigned:
            tp = self._newly_assigned.pop()
            key = (tp.topic, tp.partition)  # type: ignore[attr-defined]
            stored = self._checkpoints.get(key)
            if stored is None:
                continue
            committed = self.consumer.committed(tp)
            if committed is None or stored > committed:
                self.consumer.seek(tp, stored)
                targets[key] = stored
        # the lost commit is made again: a partition with nothing left to read would otherwise
        # keep its old committed offset (and the group its false lag) for as long as it is idle
        _commit_stored(self.consumer, targets)
        return targets

    def poll(self, max_records: int, timeout_ms: int) -> list[PartitionBatch]:
        batches = _batches(self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records))
        targets = self._resume_targets() if self._newly_assigned else {}
        if targets:
            batches = [
                PartitionBatch(b.source, b.part, [r for r in b.records if r.offset >= targets.get((b.source, b.part), -1)])
                for b in batches
            ]
            batches = [b for b in batches if b.records]
        return batches

    @property
    def finished(self) -> bool:
        return False

    def broker_connected(self) -> bool | None:
        return broker_connected(self.consumer)

    def lag(self) -> int | None:
        """Messages behind the end of the assigned partitions, from what the last fetches told
        (no broker request); None until every assigned partition has been fetched once."""
        total = 0
        assigned = self.consumer.assignment()
        if not assigned:  # not in the group yet: nothing is known, certainly not "caught up"
            return None
        for tp in assigned:
            high = self.consumer.highwater(tp)
            if high is None:
                return None
            try:
                total += max(0, high - self.consumer.position(tp, timeout_ms=0))
            except Exception:  # no position yet (kafka-python raises on a zero timeout)
                return None
        return total

    def commit(self, positions: Checkpoints) -> None:
        self._checkpoints.update(positions)
        _commit_stored(self.consumer, positions)

    def close(self) -> None:
        self.consumer.close(autocommit=False, timeout_ms=_COMMIT_TIMEOUT_MS)


class KafkaWindow:
    """Replays [start, end) of a topic by event timestamp: offsets for times, stop at the
    window's end offsets. Partitions are assigned, not subscribed: a window is a fixed job."""

    def __init__(self, spec: KafkaSource, checkpoints: Checkpoints) -> None:
        from kafka.structs import TopicPartition

        self.spec = spec
        self.consumer = _consumer(spec, spec.group)
        parts = self.consumer.partitions_for_topic(spec.topic)
        if not parts:
            raise LookupError(f"topic {spec.topic!r} not found on {spec.bootstrap}")
        tps = [TopicPartition(spec.topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        t1, t2 = window_millis(spec)
        latest = self.consumer.end_offsets(tps)
        starts = self.consumer.offsets_for_times(dict.fromkeys(tps, t1))
        ends = self.consumer.offsets_for_times(dict.fromkeys(tps, t2))
        self.end: dict[object, int] = {}
        self.window_start: dict[str, int] = {}
        total = 0
        for tp in tps:
            s = starts[tp].offset if starts.get(tp) else latest[tp]
            e = ends[tp].offset if ends.get(tp) else latest[tp]
            resume = max(s, checkpoints.get((tp.topic, tp.partition), s))
            self.end[tp] = e
            self.window_start[f"{tp.topic}/{tp.partition}"] = s
            total += max(0, e - resume)
            if resume >= e:
                self.consumer.pause(tp)
            else:
                self.consumer.seek(tp, resume)
        self._open = {tp for tp in tps if tp not in self.consumer.paused()}
        self.bar = progress_bar(spec, total)

    @property
    def window_end(self) -> dict[str, int]:
        return {f"{tp.topic}/{tp.partition}": o for tp, o in self.end.items()}  # type: ignore[attr-defined]

    def poll(self, max_records: int, timeout_ms: int) -> list[PartitionBatch]:
        if not self._open:
            return []
        out = _batches(self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records), self.end)
        for tp in list(self._open):
            if self.consumer.position(tp) >= self.end[tp]:
                self.consumer.pause(tp)
                self._open.discard(tp)
        if self.bar is not None:
            self.bar.update(sum(len(b.records) for b in out))
        return out

    @property
    def finished(self) -> bool:
        return not self._open

    def broker_connected(self) -> bool | None:
        return broker_connected(self.consumer)

    def commit(self, positions: Checkpoints) -> None:
        if self.spec.group:
            _commit_stored(self.consumer, positions)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.consumer.close(autocommit=False, timeout_ms=_COMMIT_TIMEOUT_MS)


def open_source(spec: FileSource | KafkaSource, checkpoints: Checkpoints, member: str | None = None) -> Source:
    """The source a config describes, positioned after what the store already holds. `member`:
    a live consumer's stable identity in its group (one per run and worker)."""
    if isinstance(spec, FileSource):
        return RecordedFile(spec, checkpoints)
    if spec.client == "librdkafka":
        from shadowdiff.replay.rdkafka_sources import RdKafkaLive, RdKafkaWindow

        if spec.kind == "kafka-window":
            return RdKafkaWindow(spec, checkpoints)
        return RdKafkaLive(spec, checkpoints, member)
    if spec.kind == "kafka-window":
        return KafkaWindow(spec, checkpoints)
    return KafkaLive(spec, checkpoints, member)
