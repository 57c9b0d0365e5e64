"""Retry with backoff for transient failures, and a circuit breaker so a sick candidate is not
hammered: after N consecutive failures calls fail fast (circuit_open) until a cool-down passes,
then one probe call decides whether to close it again."""

from __future__ import annotations

import asyncio
import collections
import logging
import statistics
import time

from shadowdiff.schemas.records import ErrorClass

log = logging.getLogger(__name__)

# a timeout, a dropped connection or a 502/503/504/429 may pass on a second try; a 500, a 4xx or
# a wrong-shaped answer will not, so retrying them only adds load
TRANSIENT = frozenset({ErrorClass.TIMEOUT, ErrorClass.CONNECTION})
TRANSIENT_STATUS = frozenset({429, 502, 503, 504})


class CircuitBreaker:
    """Opens after `failures_to_open` consecutive failures; one line in the log when a model goes
    down (with the cause) and one when it answers again (with how long it was down)."""

    def __init__(self, failures_to_open: int, reset_s: float, name: str = "model") -> None:
        self.failures_to_open = failures_to_open
        self.reset_s = reset_s
        self.name = name
        self.consecutive = 0
        self.opened_at: float | None = None
        self.times_opened = 0
        self.down_since: float | None = None  # first opening of the current outage

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if time.monotonic() - self.opened_at >= self.reset_s:
            # half-open: let calls through; the first failure re-opens it at once
            self.opened_at = None
            self.consecutive = self.failures_to_open - 1
            return True
        return False

    def record(self, ok: bool, cause: str = "") -> None:
        if ok:
            self.consecutive = 0
            if self.down_since is not None:
                log.warning("model %s: recovered after %.0f s (circuit closed)", self.name, time.monotonic() - self.down_since)
                self.down_since = None
            return
        self.consecutive += 1
        if self.consecutive >= self.failures_to_open and self.opened_at is None:
            self.opened_at = time.monotonic()
            self.times_opened += 1
            if self.down_since is None:
                self.down_since = self.opened_at
                log.warning(
                    "model %s: circuit open after %d failures in a row (%s); calls fail fast, one probe every %g s",
                    self.name,
                    self.consecutive,
                    cause or "no cause given",
                    self.reset_s,
                )


_JITTER_MS = 20.0
_ROUND_MIN = 16  # answers a round's median is read from, at the least


class AdaptiveLimit:
    """The calls in flight to one model, adapted as Netflix's concurrency-limits AIMD does: one
    more after each round of calls (`limit` of them, 16 at the least) answered at the model's
    unloaded pace; x`backoff` when a call times out or is told to back off (429/503, at most
    once per round trip), or when a round's median latency is past `slow_factor` times the
    lowest round median of the last 256 rounds (and 20 ms more). A shadow run then settles near
    the concurrency the model serves without queueing, instead of pushing it into timeouts that
    would be counted against it.

    Slowness is read from a round's median, not from single calls: a model's latency has its
    own spread (a lognormal sigma of 0.35 is common), and single slow calls judged against the
    fastest one held the limit at a few calls in flight on a server with room to spare."""

    def __init__(self, name: str, max_limit: int, initial: int = 4, backoff: float = 0.9, slow_factor: float = 1.5) -> None:
        self.name = name
        self.max_limit = max_limit
        self.limit = float(min(initial, max_limit))
        self.backoff = backoff
        self.slow_factor = slow_factor
        self.in_flight = 0
        self.decreases = 0
        self._freed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._round: list[float] = []
        # the lowest of them is the model's pace when not queueing
        self._round_medians: collections.deque[float] = collections.deque(maxlen=256)
        self._last_decrease = 0.0
        self._logged_at = 0.0
        self._logged_limit = int(self.limit)

    @property
    def unloaded_ms(self) -> float:
        return min(self._round_medians, default=float("inf"))

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        if self._freed is None or self._loop is not loop:
            # a client used from another event loop (a new asyncio.run, the fallback off the
            # call process): the old loop's calls are gone, and its event cannot be awaited here
            self._freed, self._loop, self.in_flight = asyncio.Event(), loop, 0
        while self.in_flight >= int(self.limit):
            self._freed.clear()
            await self._freed.wait()
        self.in_flight += 1

    def release(self, latency_ms: float | None, overloaded: bool) -> None:
        """`latency_ms` of an answered call (None: no answer), `overloaded`: a timeout or an
        answer that asks to back off."""
        self.in_flight -= 1
        if self._freed is not None:
            self._freed.set()
        now = time.monotonic()
        if overloaded:
            # once per round trip: the calls already in flight fail for the same cause
            unloaded = self.unloaded_ms
            if now - self._last_decrease >= (unloaded if unloaded < float("inf") else 1.0) / 1000:
                self._decrease(now)
        elif latency_ms is not None:
            self._round.append(latency_ms)
            if len(self._round) >= max(_ROUND_MIN, int(self.limit)):
                median = statistics.median(self._round)
                self._round.clear()
                unloaded = min(self.unloaded_ms, median)
                self._round_medians.append(median)
                # past slow_factor x the unloaded pace, and by more than the jitter of a fast
                # server (a 0.3 ms loopback call taking 0.8 ms is not load)
                if median > self.slow_factor * unloaded and median - unloaded > _JITTER_MS:
                    self._decrease(now)
                    return
                self.limit = min(float(self.max_limit), self.limit + 1.0)
        self._log(now)

    def _decrease(self, now: float) -> None:
        self.limit = max(1.0, self.limit * self.backoff)
        self.decreases += 1
        self._last_decrease = now
        self._log(now)

    def _log(self, now: float) -> None:
        if int(self.limit) != self._logged_limit and now - self._logged_at >= 10:
            log.info(
                "model %s: %d calls in flight at most (of %d; unloaded median latency %.0f ms)",
                self.name,
                int(self.limit),
                self.max_limit,
                self.unloaded_ms,
            )
            self._logged_at, self._logged_limit = now, int(self.limit)


class RateCap:
    """At most `rps` calls a second, spaced evenly (a token bucket of one)."""

    def __init__(self, rps: float) -> None:
        self.interval = 1.0 / rps
        self._next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)
