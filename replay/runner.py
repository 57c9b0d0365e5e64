"""The replay loop: poll a batch → sample → decode → call every variant → store → commit offsets.

Exactly-once effect: the source's offsets are committed only after the batch (rows and
checkpoints together) is committed in DuckDB, and rows are keyed by source coordinates, so a
crash between the two commits re-reads a batch whose rows are then ignored, not duplicated.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from replay.decode import Decoder
from replay.messages import DeadLetter, Output, Position, RawMessage, Request
from replay.models.base import CallResult, ModelClient, read_output
from replay.paths import lookup
from replay.sampling import QUOTA, RATE, Sampler
from replay.sources import Source
from replay.store import StoreWriter
from schemas.config import RunConfig
from schemas.records import BASELINE, BASELINE_REPEAT, DeadLetterReason, ErrorClass, candidate_variant

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    consumed: int = 0
    sampled: int = 0
    stored_pairs: int = 0
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
        self.stats = RunStats()
        self.on_checkpoint = on_checkpoint
        self.checkpoint_every_s = checkpoint_every_s
        self._loop = asyncio.new_event_loop()

    # -- sampling and decoding ----------------------------------------------------------------

    def _sample_key_of(self, obj: dict[str, Any]) -> bytes | None:
        path = self.cfg.envelope.request_id if self.sampler.key_kind == "request_id" else self.sampler.key_name
        v = lookup(obj, path, None)
        return None if v is None else str(v).encode()

    def _admit(self, msg: RawMessage, reqs: list[Request], dead: list[DeadLetter]) -> None:
        """Decide one message: sampled request, dead letter, or skipped."""
        too_big = self.decoder.check_size(msg)
        if too_big is not None:
            dead.append(too_big)
            return
        key = self.sampler.raw_key(msg)
        hit: bool | None = None
        if key is not None:
            hit = self.sampler.hit(key)
            if not hit and not self.sampler.quotas_open:
                return  # the common case at low rates: never decoded
        parsed = self.decoder.parse(msg)
        if isinstance(parsed, DeadLetter):
            dead.append(parsed)
            return
        if hit is None:
            k = self._sample_key_of(parsed)
            hit = self.sampler.hit(k) if k is not None else False
            if k is None and not self.sampler.quotas_open:
                # no key means no deterministic decision: record it rather than guess
                dead.append(
                    self.decoder.dead(msg, DeadLetterReason.MISSING_FIELD, f"sampling key {self.cfg.sampling.key}: required")
                )
                return
            if not hit and not self.sampler.quotas_open:
                return
        req = self.decoder.decode(msg, parsed, RATE if hit else QUOTA)
        if isinstance(req, DeadLetter):
            dead.append(req)
            return
        if hit:
            self.sampler.count_rate_sample(req.segments)
        elif not self.sampler.take_quota(req.segments):
            return
        reqs.append(req)

    # -- model calls --------------------------------------------------------------------------

    def _live_baseline(self, reqs: list[Request]) -> list[CallResult]:
        out = []
        for r in reqs:
            if r.has_live_output:
                out.append(CallResult(r.live_output, r.live_latency_ms, None, None, 0))
            else:
                out.append(CallResult(None, None, ErrorClass.MISSING, "no live output in the envelope", 0))
        return out

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
        for variant, res in results.items():
            for r, c in zip(reqs, res, strict=True):
                err, detail = c.error_class, c.error_detail
                score = label = None
                if err is None:
                    read = read_output(self.cfg.output, c.output)
                    if read.error is not None:
                        err, detail = ErrorClass.WRONG_SHAPE, read.error
                    score, label = read.score, read.label
                if err is not None:
                    self.stats.call_errors[f"{variant}/{err}"] += 1
                version = r.live_model_version if variant == BASELINE and self.baseline is None else versions.get(variant)
                rows.append(
                    (
                        r,
                        Output(
                            variant,
                            version,
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

    def run(self, stop: threading.Event | None = None, max_batches: int | None = None) -> RunStats:
        """Replay until the source is exhausted (file, window), `stop` is set (SIGTERM) or
        `max_batches` were stored. The batch in hand is always finished and committed."""
        stop = stop or threading.Event()
        last_hook = time.monotonic()
        try:
            while not stop.is_set():
                msgs = self.source.poll(self.cfg.run.batch_size, self.cfg.run.batch_timeout_ms)
                if msgs:
                    self._process(msgs)
                    if max_batches is not None and self.stats.batches >= max_batches:
                        break
                elif self.source.finished:
                    break
                if self.on_checkpoint and time.monotonic() - last_hook >= self.checkpoint_every_s:
                    self.on_checkpoint(self.writer, self.stats, False)
                    last_hook = time.monotonic()
            self.stats.stopped_by_signal = stop.is_set()
            if self.on_checkpoint:
                self.on_checkpoint(self.writer, self.stats, True)
        finally:
            for client in [self.baseline, *self.candidates.values()]:
                if client is not None:
                    self._loop.run_until_complete(client.close())
            self._loop.close()
        return self.stats

    def _process(self, msgs: list[RawMessage]) -> None:
        reqs: list[Request] = []
        dead: list[DeadLetter] = []
        positions: dict[tuple[str, int], Position] = {}
        for msg in msgs:
            k = (msg.source, msg.part)
            pos = positions.get(k)
            if pos is None:
                prev = self.writer.positions.get(k)
                pos = Position(msg.offset, prev.consumed, prev.sampled) if prev else Position(msg.offset)
                positions[k] = pos
            pos.next_offset = msg.offset + 1
            pos.consumed += 1
            n_before = len(reqs)
            self._admit(msg, reqs, dead)
            if len(reqs) > n_before:
                pos.sampled += 1
        rows = self._loop.run_until_complete(self._call_all(reqs)) if reqs else []
        self.writer.write_batch(reqs, rows, dead, positions)
        # only now, with the rows durable, may the source forget these offsets
        self.source.commit({k: p.next_offset for k, p in positions.items()})
        self.stats.consumed += len(msgs)
        self.stats.sampled += len(reqs)
        self.stats.batches += 1
        for d in dead:
            self.stats.dead_letters[d.reason] += 1
