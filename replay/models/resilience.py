"""Retry with backoff for transient failures, and a circuit breaker so a sick candidate is not
hammered: after N consecutive failures calls fail fast (circuit_open) until a cool-down passes,
then one probe call decides whether to close it again."""

from __future__ import annotations

import logging
import time

from schemas.records import ErrorClass

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
