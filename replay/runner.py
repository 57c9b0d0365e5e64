"""The replay loop: poll → sample → decode → (accumulate) → call every variant → store → commit.

Exactly-once effect: the source's offsets are committed only after the batch (rows and
checkpoints together) is committed in DuckDB, and rows are keyed by source coordinates, so a
crash between the two commits re-reads a batch whose rows are then ignored, not duplicated.

Polls are accumulated until `batch_size` requests are sampled (or 20x that many messages were
read, or `batch_timeout_ms` passed): at 5% sampling a commit per poll would cost more than the
reading itself.

The work is shared by threads:
- the main thread polls and samples. When the sampling key is the record key or a header (and
  no quota is open), admitted messages are only collected, and a batch is cut at exactly
  `batch_size` of them (the first few batches are smaller, see `Replayer._batch_rows`);
  otherwise each message is decoded here, in Python;
- the pipeline thread (an event loop, replay/pipeline.py) calls every variant and builds the
  output columns; a decoder thread decodes collected batches in DuckDB (replay/columnar.py;
  the rows it cannot vouch for go to the Python decoder) without holding up the calls. HTTP
  models make their calls from a child process of their own (replay/models/call_process.py);
- the writer thread stores each batch and its checkpoints in one DuckDB transaction.
Up to `_MAX_INFLIGHT` batches are between the main thread and their commit. DuckDB runs with
the GIL released, so decoding and writing overlap the Kafka reads. Batches are stored strictly
in order, and the main thread commits a batch's offsets once its DuckDB commit returned (the
Kafka consumer is not thread-safe, so it stays on the main thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shadowdiff.replay import columnar
from shadowdiff.replay.columnar import BatchDecoder
from shadowdiff.replay.formats import payload_reader
from shadowdiff.replay.messages import PartitionBatch, Position
from shadowdiff.replay.models.base import ModelClient
from shadowdiff.replay.pipeline import BatchPipeline, PendingBatch
from shadowdiff.replay.sampling import QUOTA, RATE, Sampler
from shadowdiff.replay.sources import Source
from shadowdiff.replay.store import StoreWriter
from shadowdiff.schemas.config import RunConfig
from shadowdiff.schemas.envelope import Decoder
from shadowdiff.schemas.paths import getter
from shadowdiff.schemas.policy import Policy
from shadowdiff.schemas.records import DeadLetter, DeadLetterReason, RawMessage

log = logging.getLogger(__name__)

_MAX_INFLIGHT = 2  # batches between the main thread and the DuckDB commit: one calling, one writing
# The DuckDB threads take the GIL briefly many times a query (Arrow scans of the registered
# batch, the result's conversion), and with CPython's default 5 ms switch interval each of those
# waits up to 5 ms behind the main thread's Kafka reads, which nearly doubles a batch's decode
# next to a busy thread. 1 ms is measurably faster at 100% sampling (bench/replay_bench.py);
# 0.5 ms is not faster than 1 ms.
_SWITCH_INTERVAL_S = 0.001
_RAMP_UP_BATCHES = 4  # smaller batches first, see Replayer._batch_rows
# records per poll: kafka-python sends the next fetches when a poll returns, so short polls keep
# the broker working while this thread parses (100% sampling, A/B medians of 5 alternating
# rounds: 64.0k msg/s with polls of a whole batch, 65.9k at 2000, 68.2k at 500)
_POLL_RECORDS = 500
# a broker connection lost for less than this is a reconnect, not an outage worth a line
_BROKER_GRACE_S = 3.0


@dataclass
class RunStats:
    consumed: int = 0
    sampled: int = 0
    batches: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    call_errors: Counter[str] = field(default_factory=Counter)  # "variant/error_class"
    # the replay loop's span: from its first poll to its last commit (opening the store, the
    # offsets-for-times lookup and closing are not replay work; a 200k-message bench run spent
    # ~0.9 s of its 4 s in them)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    stopped_by_signal: bool = False
    # time spent waiting on a source with nothing to read (a caught-up live topic): the rate is
    # the work's, not diluted by waiting for traffic
    idle_seconds: float = 0.0
    lag: int | None = None  # live topics: messages behind the end, as last seen

    def summary(self) -> dict[str, Any]:
        secs = max((self.finished or time.monotonic()) - self.started, 1e-9)
        busy = max(secs - self.idle_seconds, 1e-9)
        return {
            "consumed": self.consumed,
            "sampled": self.sampled,
            "batches": self.batches,
            "dead_letters": dict(self.dead_letters),
            "call_errors": dict(self.call_errors),
            "seconds": round(secs, 3),
            "idle_seconds": round(self.idle_seconds, 3),
            "consumed_per_s": round(self.consumed / busy, 1),
            "lag": self.lag,
            "stopped_by_signal": self.stopped_by_signal,
        }

    def progress_line(self) -> str:
        s = self.summary()
        dead = sum(self.dead_letters.values())
        errors = sum(self.call_errors.values())
        lag = "" if self.lag is None else f", lag {self.lag}"
        return (
            f"consumed {s['consumed']} ({s['consumed_per_s']:.0f} msg/s while busy), sampled {s['sampled']}, "
            f"dead letters {dead}, call errors {errors}{lag}"
        )


CheckpointHook = Callable[[StoreWriter, RunStats, bool], None]


class Replayer:
    def __init__(
        self,
        cfg: RunConfig,
        writer: StoreWriter,
        source: Source,
        baseline: ModelClient | None,
        candidates: Mapping[str, ModelClient],
        on_checkpoint: CheckpointHook | None = None,
        checkpoint_every_s: float = 15.0,
    ) -> None:
        self.cfg = cfg
        self.writer = writer
        self.source = source
        self.baseline = baseline
        self.candidates = dict(candidates)
        self.decoder = Decoder.for_run(cfg, payload_reader(cfg.envelope))
        self.layout = self.decoder.layout
        # whole batches are decoded in DuckDB when every configured path has a JSON-path twin
        self.batch_decoder = BatchDecoder(cfg, self.decoder.payload) if columnar.supports(cfg) else None
        # "policy" is resolved by the command that starts the run; a run started through this
        # API alone takes the default policy's min_samples
        per_segment_k = cfg.sampling.per_segment_k(Policy().min_samples)
        every_value_of = self.layout.segment_names if per_segment_k else ()
        self.sampler = Sampler(
            cfg.sampling, writer.quota_state(list(cfg.sampling.quotas), every_value_of), every_value_of, per_segment_k
        )
        self.stats = RunStats()
        self.on_checkpoint = on_checkpoint
        self.checkpoint_every_s = checkpoint_every_s
        path = cfg.envelope.request_id if self.sampler.key_kind == "request_id" else self.sampler.key_name
        self._key_of = getter(path)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="shadowdiff-pipeline", daemon=True)
        self._pending = PendingBatch()
        # batches handed to the pipeline thread, oldest first; each future ends with its commit
        self._inflight: deque[tuple[PendingBatch, concurrent.futures.Future[None]]] = deque()
        self._dispatched = 0
        self._caught_up = False  # a live source read to its end, see _watch
        self._broker_lost: tuple[float, str] | None = None  # (monotonic, UTC text) of the loss
        self._broker_outage_logged = False
        self._last_progress = time.monotonic()
        self.pipeline = BatchPipeline(
            cfg, writer, self.decoder, self.batch_decoder, baseline, self.candidates, self._loop, self.stats.call_errors
        )

    # -- sampling and decoding (main thread) ----------------------------------------------------

    def _ingest(self, batches: list[PartitionBatch]) -> None:
        """Sample and decode polled records into the pending batch. When the sampling key is
        read without decoding and DuckDB decodes, admitted records are only collected, and a
        batch is cut at exactly `_batch_rows()` of them (DuckDB's working memory follows a
        batch's rows; a poll could otherwise overshoot it)."""
        fast = self.sampler.decides_before_decoding and not self.sampler.quotas_open
        for b in batches:
            if fast and self.batch_decoder is not None:
                self._collect(b)
                continue
            p = self._pending
            self._account(p, b.source, b.part, b.records)
            if not fast:
                for r in b.records:
                    self._admit(p, self._raw(b, r), None)
                continue
            decode = self.decoder.decode_record
            source, part = b.source, b.part
            for r in self._admitted(b.records):
                # headers are left out: they only matter to the sampling decision, already made
                p.add(decode(source, part, r.offset, r.key, r.value, r.timestamp, RATE))

    def _batch_rows(self) -> int:
        """Where the pending batch is cut: `batch_size`, but the first batches are smaller
        (1/16, 1/8, 1/4, 1/2 of it, at least 500), so the models get their first calls, and the
        store its first rows, after a fraction of a batch's reading and decoding (at 20k rows,
        ~0.05 s instead of ~0.45 s). Later batches are whole: each DuckDB decode has a fixed
        cost of ~15 ms."""
        size = self.cfg.run.batch_size
        return min(size, max(500, size >> max(0, _RAMP_UP_BATCHES - self._dispatched)))

    def _collect(self, b: PartitionBatch) -> None:
        recs = b.records
        while recs:
            p = self._pending
            size = self._batch_rows()
            room = size - p.size()
            if room <= 0:  # filled by the per-message path earlier in this poll
                self._dispatch()
                continue
            admitted = self._admitted(recs)
            if len(admitted) > room:
                # cut after the room-th admitted record; the rest opens the next batch
                last = admitted[room - 1].offset
                cut = next(i for i, r in enumerate(recs) if r.offset > last)
                head, recs, admitted = recs[:cut], recs[cut:], admitted[:room]
            else:
                head, recs = recs, []
            self._account(p, b.source, b.part, head)
            p.raw.extend(b.source, b.part, admitted, self.batch_decoder.transcode if self.batch_decoder else None)
            if p.size() >= size:
                self._dispatch()

    def _account(self, p: PendingBatch, source: str, part: int, recs: list[Any]) -> None:
        """Count `recs` as read into `p` (positions are per batch, totals kept downstream)."""
        if not recs:
            return
        if not p.consumed:
            p.since = time.monotonic()
        k = (source, part)
        pos = p.positions.get(k)
        if pos is None:
            pos = p.positions[k] = Position(recs[0].offset)
        pos.next_offset = recs[-1].offset + 1
        pos.consumed += len(recs)
        p.consumed += len(recs)

    def _admitted(self, recs: list[Any]) -> list[Any]:
        """The records sampled by their record key or header (quotas closed). An oversized
        message is always admitted: it must become a dead letter."""
        threshold, max_bytes = self.sampler.threshold, self.decoder.max_bytes
        if threshold is None:
            return recs
        if self.sampler.key_kind == "kafka_key":
            # the common case at low rates: the hash test inlined (two calls fewer a message)
            salt, blake2b, from_bytes = self.sampler.salt, hashlib.blake2b, int.from_bytes
            return [
                r
                for r in recs
                if (r.value is not None and len(r.value) > max_bytes)
                or from_bytes(blake2b(r.key or b"", digest_size=8, salt=salt).digest(), "big") < threshold
            ]
        hit, raw_key = self.sampler.hit, self.sampler.raw_key
        return [r for r in recs if (r.value is not None and len(r.value) > max_bytes) or hit(raw_key(r))]  # type: ignore[arg-type]

    @staticmethod
    def _raw(b: PartitionBatch, r: Any) -> RawMessage:
        return RawMessage(b.source, b.part, r.offset, r.key, r.value, r.timestamp, tuple(r.headers or ()))

    def _admit(self, p: PendingBatch, msg: RawMessage, hit: bool | None) -> None:
        """Decide one message the slow way (the key is in the value, or quotas are open):
        sampled request, dead letter, or skipped."""
        too_big = self.decoder.check_size(msg)
        if too_big is not None:
            p.dead.append(too_big)
            return
        h = -1
        if hit is None:
            key = self.sampler.raw_key(msg)
            if key is not None:
                h = self.sampler.hash_of(key)
                hit = self.sampler.hit_hash(h)
                if not hit and not (self.sampler.quotas_open and self.sampler.quota_may_take(h)):
                    return
        parsed = self.decoder.parse(msg)
        if type(parsed) is DeadLetter:
            p.dead.append(parsed)
            return
        assert isinstance(parsed, dict)
        if hit is None:
            k = self._key_of(parsed)
            if k is None:
                # no key means no deterministic decision: record it rather than guess
                p.dead.append(
                    self.decoder.dead(msg, DeadLetterReason.MISSING_FIELD, f"sampling key {self.cfg.sampling.key}: required")
                )
                return
            h = self.sampler.hash_of(str(k).encode())
            hit = self.sampler.hit_hash(h)
            if not hit and not (self.sampler.quotas_open and self.sampler.quota_may_take(h)):
                return
        row = self.decoder.decode(msg, parsed, RATE if hit else QUOTA)
        if type(row) is DeadLetter:
            p.dead.append(row)
            return
        assert type(row) is tuple
        if hit:
            if self.sampler.quotas_open:
                self.sampler.count_rate_sample(self.layout.segments_of(row))
        else:
            entered = self.sampler.take_quota(self.layout.segments_of(row), h)
            if not entered:
                return
            p.quota_hashes.extend((msg.source, msg.part, msg.offset, q, h) for q in entered)
        p.reqs.append(row)

    # -- the loop -----------------------------------------------------------------------------

    def _due(self) -> bool:
        p = self._pending
        size = self._batch_rows()
        if not p.consumed:
            return False
        return (
            len(p.reqs) >= size or p.consumed >= 20 * size or (time.monotonic() - p.since) * 1000 >= self.cfg.run.batch_timeout_ms
        )

    def run(self, stop: threading.Event | None = None, max_batches: int | None = None) -> RunStats:
        """Replay until the source is exhausted (file, window), `stop` is set (SIGTERM) or
        `max_batches` were stored. What was read is always stored and committed before exit."""
        stop = stop or threading.Event()
        last_hook = self._last_progress = time.monotonic()
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, _SWITCH_INTERVAL_S))
        self._loop_thread.start()
        self.stats.started = time.monotonic()
        try:
            while not stop.is_set():
                polled_at = time.monotonic()
                batches = self.source.poll(min(self._batch_rows(), _POLL_RECORDS), self.cfg.run.batch_timeout_ms)
                self._watch(bool(batches), polled_at)
                self._complete_done()
                if batches:
                    self._ingest(batches)
                    if max_batches is not None and self._dispatched >= max_batches:
                        break
                if self._due() or (not batches and self._pending.consumed):
                    self._dispatch()
                    if max_batches is not None and self._dispatched >= max_batches:
                        break
                elif not batches and self.source.finished:
                    break
                if self.on_checkpoint and time.monotonic() - last_hook >= self.checkpoint_every_s:
                    self._complete()
                    self.on_checkpoint(self.writer, self.stats, False)
                    last_hook = time.monotonic()
            self._dispatch()
            self._complete()
            self.stats.finished = time.monotonic()
            self.stats.stopped_by_signal = stop.is_set()
            if self.on_checkpoint:
                self.on_checkpoint(self.writer, self.stats, True)
        finally:
            for client in [self.baseline, *self.candidates.values()]:
                if client is not None:
                    asyncio.run_coroutine_threadsafe(client.close(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(30)
            self._loop.close()
            self.pipeline.close()
            sys.setswitchinterval(switch_interval)
        return self.stats

    def _watch(self, got_records: bool, polled_at: float) -> None:
        """Idle time, the progress line every `progress_every_s`, and the notice that a live
        source is caught up (said once, and again only after falling well behind)."""
        if not got_records and not self._pending.consumed and not self._inflight:
            self.stats.idle_seconds += time.monotonic() - polled_at
        progress_due = time.monotonic() - self._last_progress >= self.cfg.run.progress_every_s
        lag_of = getattr(self.source, "lag", None)
        # asked when a poll came back empty (the moment of catching up) or for the progress line
        if lag_of is not None and (progress_due or not got_records):
            self.stats.lag = lag = lag_of()
            if lag == 0 and not got_records and not self._caught_up:
                # nothing more to read: store what is in hand, so the line's counts are final
                self._dispatch()
                self._complete()
                log.info("caught up with the source: lag 0 after %s", self.stats.progress_line())
                self._caught_up = True
            elif lag is not None and lag > 10 * self.cfg.run.batch_size:
                self._caught_up = False
        if progress_due:
            log.info("progress: %s", self.stats.progress_line())
            self._last_progress = time.monotonic()
        self._watch_broker(got_records)

    def _watch_broker(self, got_records: bool) -> None:
        """One line when the broker has been unreachable for `_BROKER_GRACE_S`, and one when it
        answers again (kafka-python itself logs every reconnect attempt, not the outage)."""
        connected_of = getattr(self.source, "broker_connected", None)
        if connected_of is None:
            return
        connected = True if got_records else connected_of()
        now = time.monotonic()
        if connected is False:
            if self._broker_lost is None:
                self._broker_lost = (now, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            elif not self._broker_outage_logged and now - self._broker_lost[0] >= _BROKER_GRACE_S:
                log.warning(
                    "broker unreachable since %s (%s): consumption paused; stored rows are safe",
                    self._broker_lost[1],
                    getattr(getattr(self.source, "spec", None), "bootstrap", "?"),
                )
                self._broker_outage_logged = True
        elif connected and self._broker_lost is not None:
            if self._broker_outage_logged:
                lost_at, lost_utc = self._broker_lost
                log.warning("broker reachable again after %.0f s (unreachable since %s)", now - lost_at, lost_utc)
            self._broker_lost = None
            self._broker_outage_logged = False

    def _dispatch(self) -> None:
        """Hand the pending batch to the pipeline thread, once fewer than `_MAX_INFLIGHT`
        batches are in flight (memory stays bounded)."""
        p = self._pending
        if not p.consumed:
            return
        self._pending = PendingBatch()
        while len(self._inflight) >= _MAX_INFLIGHT:
            self._complete_oldest()
        self._inflight.append((p, asyncio.run_coroutine_threadsafe(self.pipeline.process(p), self._loop)))
        self._dispatched += 1

    def _complete(self) -> None:
        """Wait until every batch in flight is stored and its offsets committed."""
        while self._inflight:
            self._complete_oldest()

    def _complete_done(self) -> None:
        """Commit the offsets of batches already stored, without waiting for the others: on a
        quiet live topic the last batch would otherwise wait for the next traffic."""
        while self._inflight and self._inflight[0][1].done():
            self._complete_oldest()

    def _complete_oldest(self) -> None:
        p, future = self._inflight.popleft()
        future.result()  # called and committed in DuckDB (or raises)
        # only now, with the rows durable, may the source forget these offsets
        self.source.commit({k: pos.next_offset for k, pos in p.positions.items()})
        self.stats.consumed += p.consumed
        self.stats.sampled += p.sampled
        self.stats.batches += 1
        for d in p.dead:
            self.stats.dead_letters[d.reason] += 1
