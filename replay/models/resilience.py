"""Retry with backoff for transient failures, and a circuit breaker so a sick candidate is not
hammered: after N consecutive failures calls fail fast (circuit_open) until a cool-down passes,
then one probe call decides whether to close it again."""

from __future__ import annotations

import time

from schemas.records import ErrorClass

# a timeout, a dropped connection or a 502/503/504/429 may pass on a second try; a 500, a 4xx or
# a wrong-shaped answer will not, so retrying them only adds load
TRANSIENT = frozenset({ErrorClass.TIMEOUT, ErrorClass.CONNECTION})
TRANSIENT_STATUS = frozenset({429, 502, 503, 504})


class CircuitBreaker:
    def __init__(self, failures_to_open: int, reset_s: float) -> None:
        self.failures_to_open = failures_to_open
        self.reset_s = reset_s
        self.consecutive = 0
        self.opened_at: float | None = None
        self.times_opened = 0

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if time.monotonic() - self.opened_at >= self.reset_s:
            # half-open: let calls through; the first failure re-opens it at once
            self.opened_at = None
            self.consecutive = self.failures_to_open - 1
            return True
        return False

    def record(self, ok: bool) -> None:
        if ok:
            self.consecutive = 0
            return
        self.consecutive += 1
        if self.consecutive >= self.failures_to_open and self.opened_at is None:
            self.opened_at = time.monotonic()
            self.times_opened += 1
