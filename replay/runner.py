"""The replay loop: poll → sample → decode → (accumulate) → call every variant → store → commit.

Exactly-once effect: the source's offsets are committed only after the batch (rows and
checkpoints together) is committed in DuckDB, and rows are keyed by source coordinates, so a
crash between the two commits re-reads a batch whose rows are then ignored, not duplicated.

Polls are accumulated until `batch_size` requests are sampled (or 20x that many messages were
read, or `batch_timeout_ms` passed): at 5% sampling a commit per poll would cost more than the
reading itself.

Model calls run on an event loop in a second thread, one batch ahead: while batch N's calls are
in flight the main thread reads and decodes batch N+1. Batches are still stored and committed
strictly in order, each only after its calls finished.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from replay.decode import Decoder
from replay.messages import DeadLetter, Output, PartitionBatch, Position, RawMessage, Request
from replay.models.base import CallResult, ModelClient, OutputReader
from replay.sampling import QUOTA, RATE, Sampler
from replay.sources import Source
from replay.store import StoreWriter
from schemas.config import RunConfig
from schemas.paths import getter
from schemas.records import BASELINE, BASELINE_REPEAT, DeadLetterReason, ErrorClass, candidate_variant

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    consumed: int = 0
    sampled: int = 0
    batches: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    call_errors: Counter[str] = field(default_factory=Counter)  # "variant/error_class"
    started: float = field(default_factory=time.monotonic)
    stopped_by_signal: bool = False

    def summary(self) -> dict[str, Any]:
        secs = max(time.monotonic() - self.started, 1e-9)
        return {
            "consumed": self.consumed,
            "sampled": self.sampled,
            "batches": self.batches,
            "dead_letters": dict(self.dead_letters),
            "call_errors": dict(self.call_errors),
            "seconds": round(secs, 3),
            "consumed_per_s": round(self.consumed / secs, 1),
            "stopped_by_signal": self.stopped_by_signal,
        }


CheckpointHook = Callable[[StoreWriter, RunStats, bool], None]


@dataclass
class _Pending:
    """What has been read but not yet stored."""

    reqs: list[Request] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    positions: dict[tuple[str, int], Position] = field(default_factory=dict)
    consumed: int = 0
    since: float = 0.0


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
        self.decoder = Decoder(cfg)
        self.sampler = Sampler(cfg.sampling, writer.quota_counts(list(cfg.sampling.quotas)))
        self.reader = OutputReader(cfg.output)
        self.stats = RunStats()
        self.on_checkpoint = on_checkpoint
        self.checkpoint_every_s = checkpoint_every_s
        path = cfg.envelope.request_id if self.sampler.key_kind == "request_id" else self.sampler.key_name
        self._key_of = getter(path)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="shadowdiff-calls", daemon=True)
        self._pending = _Pending()
        # latest position per partition, including a batch still in flight (the store's
        # positions lag one batch behind while calls run)
        self._positions: dict[tuple[str, int], Position] = dict(writer.positions)
        self._inflight: tuple[_Pending, concurrent.futures.Future[list[tuple[Request, Output]]]] | None = None

    # -- sampling and decoding ----------------------------------------------------------------

    def _ingest(self, batches: list[PartitionBatch]) -> None:
        """Sample and decode polled records into the pending batch."""
        p = self._pending
        if not p.consumed:
            p.since = time.monotonic()
        fast = self.sampler.decides_before_decoding and not self.sampler.quotas_open
        max_bytes = self.decoder.max_bytes
        hit = self.sampler.hit
        raw_key = self.sampler.raw_key
        by_record_key = self.sampler.key_kind == "kafka_key"
        threshold, salt = self.sampler.threshold, self.sampler.salt
        blake2b, from_bytes = hashlib.blake2b, int.from_bytes
        for b in batches:
            recs = b.records
            k = (b.source, b.part)
            pos = p.positions.get(k)
            if pos is None:
                prev = self._positions.get(k)
                pos = Position(recs[0].offset, prev.consumed, prev.sampled) if prev else Position(recs[0].offset)
                p.positions[k] = pos
            pos.next_offset = recs[-1].offset + 1
            pos.consumed += len(recs)
            p.consumed += len(recs)
            before = len(p.reqs)
            if fast and by_record_key:
                # the common case at low rates: most records are never decoded, and the hash
                # test is inlined (two calls fewer per message)
                for r in recs:
                    v = r.value
                    if (v is not None and len(v) > max_bytes) or (
                        threshold is None
                        or from_bytes(blake2b(r.key or b"", digest_size=8, salt=salt).digest(), "big") < threshold
                    ):
                        self._admit(self._raw(b, r), True)
            elif fast:
                for r in recs:
                    v = r.value
                    if (v is not None and len(v) > max_bytes) or hit(raw_key(r)):  # type: ignore[arg-type]
                        self._admit(self._raw(b, r), True)
            else:
                for r in recs:
                    self._admit(self._raw(b, r), None)
            pos.sampled += len(p.reqs) - before

    @staticmethod
    def _raw(b: PartitionBatch, r: Any) -> RawMessage:
        return RawMessage(b.source, b.part, r.offset, r.key, r.value, r.timestamp, tuple(r.headers or ()))

    def _admit(self, msg: RawMessage, hit: bool | None) -> None:
        """Decide one message: sampled request, dead letter, or skipped."""
        p = self._pending
        too_big = self.decoder.check_size(msg)
        if too_big is not None:
            p.dead.append(too_big)
            return
        if hit is None:
            key = self.sampler.raw_key(msg)
            if key is not None:
                hit = self.sampler.hit(key)
                if not hit and not self.sampler.quotas_open:
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
            hit = self.sampler.hit(str(k).encode())
            if not hit and not self.sampler.quotas_open:
                return
        req = self.decoder.decode(msg, parsed, RATE if hit else QUOTA)
        if type(req) is DeadLetter:
            p.dead.append(req)
            return
        assert isinstance(req, Request)
        if hit:
            if self.sampler.quotas_open:
                self.sampler.count_rate_sample(req.segments)
        elif not self.sampler.take_quota(req.segments):
            return
        p.reqs.append(req)

    # -- model calls --------------------------------------------------------------------------

    @staticmethod
    def _live_baseline(reqs: list[Request]) -> list[CallResult]:
        missing = CallResult(None, None, ErrorClass.MISSING, "no live output in the envelope", 0)
        return [CallResult(r.live_output, r.live_latency_ms, None, None, 0) if r.has_live_output else missing for r in reqs]

    async def _call_all(self, reqs: list[Request]) -> list[tuple[Request, Output]]:
        inputs = [r.model_input for r in reqs]
        calls: dict[str, Any] = {}
        versions: dict[str, str | None] = {}
        if self.baseline is not None:
            calls[BASELINE] = self.baseline.predict(inputs)
            versions[BASELINE] = self.baseline.model_version
            if self.cfg.baseline.repeat:
                calls[BASELINE_REPEAT] = self.baseline.predict(inputs)
                versions[BASELINE_REPEAT] = self.baseline.model_version
        for name, client in self.candidates.items():
            calls[candidate_variant(name)] = client.predict(inputs)
            versions[candidate_variant(name)] = client.model_version
        results = dict(zip(calls, await asyncio.gather(*calls.values()), strict=True))
        if self.baseline is None:
            results[BASELINE] = self._live_baseline(reqs)
        rows: list[tuple[Request, Output]] = []
        read = self.reader.read
        wrong_shape = str(ErrorClass.WRONG_SHAPE)
        for variant, res in results.items():
            live = variant == BASELINE and self.baseline is None
            version = versions.get(variant)
            for r, c in zip(reqs, res, strict=True):
                err, detail = c.error_class, c.error_detail
                score = label = None
                if err is None:
                    score, label, problem = read(c.output)
                    if problem is not None:
                        err, detail = wrong_shape, problem
                if err is not None:
                    self.stats.call_errors[f"{variant}/{err}"] += 1
                rows.append(
                    (
                        r,
                        Output(
                            variant,
                            r.live_model_version if live else version,
                            score,
                            label,
                            c.output,
                            c.latency_ms,
                            None if err is None else str(err),
                            detail,
                            c.attempts,
                        ),
                    )
                )
        return rows

    # -- the loop -----------------------------------------------------------------------------

    def _due(self) -> bool:
        p = self._pending
        size = self.cfg.run.batch_size
        if not p.consumed:
            return False
        return (
            len(p.reqs) >= size or p.consumed >= 20 * size or (time.monotonic() - p.since) * 1000 >= self.cfg.run.batch_timeout_ms
        )

    def run(self, stop: threading.Event | None = None, max_batches: int | None = None) -> RunStats:
        """Replay until the source is exhausted (file, window), `stop` is set (SIGTERM) or
        `max_batches` were stored. What was read is always stored and committed before exit."""
        stop = stop or threading.Event()
        last_hook = time.monotonic()
        self._loop_thread.start()
        try:
            while not stop.is_set():
                batches = self.source.poll(self.cfg.run.batch_size, self.cfg.run.batch_timeout_ms)
                if batches:
                    self._ingest(batches)
                if self._due() or (not batches and self._pending.consumed):
                    self._dispatch()
                    if max_batches is not None and self.stats.batches >= max_batches:
                        break
                elif not batches and self.source.finished:
                    break
                if self.on_checkpoint and time.monotonic() - last_hook >= self.checkpoint_every_s:
                    self._complete()
                    self.on_checkpoint(self.writer, self.stats, False)
                    last_hook = time.monotonic()
            self._dispatch()
            self._complete()
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
        return self.stats

    def _dispatch(self) -> None:
        """Start the model calls of the pending batch, after storing the one before it."""
        p = self._pending
        if not p.consumed:
            return
        self._pending = _Pending()
        self._positions.update(p.positions)
        self._complete()
        future = asyncio.run_coroutine_threadsafe(self._call_all(p.reqs) if p.reqs else _nothing(), self._loop)
        self._inflight = (p, future)

    def _complete(self) -> None:
        """Wait for the in-flight batch's calls, store it, then commit its offsets."""
        if self._inflight is None:
            return
        p, future = self._inflight
        self._inflight = None
        rows = future.result()
        self.writer.write_batch(p.reqs, rows, p.dead, p.positions)
        # only now, with the rows durable, may the source forget these offsets
        self.source.commit({k: pos.next_offset for k, pos in p.positions.items()})
        self.stats.consumed += p.consumed
        self.stats.sampled += len(p.reqs)
        self.stats.batches += 1
        for d in p.dead:
            self.stats.dead_letters[d.reason] += 1


async def _nothing() -> list[tuple[Request, Output]]:
    return []
