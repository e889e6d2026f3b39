"""A per-worker circuit breaker: stop sending requests to a worker that keeps failing them.

closed (requests flow) -> open (none; after ``failure_threshold`` consecutive failures, or a
failure rate of ``failure_rate`` over ``window`` seconds with at least ``min_requests``) ->
half-open after ``open_seconds`` (up to ``success_threshold`` trial requests at a time) -> closed
after ``success_threshold`` successes, or open again at the first failure.

Only the worker's own failures count (connection lost, timeouts, engine errors). Back-pressure
(RESOURCE_EXHAUSTED, a refused stream) and the client's mistakes do not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class CircuitConfig:
    enabled: bool = True
    failure_threshold: int = 10
    success_threshold: int = 3
    open_seconds: float = 60.0
    window: float = 120.0
    failure_rate: float = 0.5
    min_requests: int = 20


class CircuitState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_BUCKETS = 12  # the window's outcomes in this many time buckets: O(1) per outcome


class CircuitBreaker:
    def __init__(self, config: CircuitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self._opened_at = 0.0
        self._trials = 0  # half-open: trial requests in flight
        self._trial_successes = 0
        self._bucket_width = config.window / _BUCKETS
        self._bucket_start = [0.0] * _BUCKETS
        self._totals = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS
        self.opened = 0  # times the circuit opened, for metrics and tests

    # -- admission -----------------------------------------------------------------------------
    def allows(self) -> bool:
        """Whether a request may be sent now (does not reserve anything)."""
        if not self.config.enabled or self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            return self._clock() - self._opened_at >= self.config.open_seconds
        return self._trials < self.config.success_threshold

    def on_attempt(self) -> None:
        """A request is being sent: in half-open state it takes a trial slot."""
        if not self.config.enabled:
            return
        if self.state is CircuitState.OPEN and self.allows():
            self.state = CircuitState.HALF_OPEN
            self._trials = 0
            self._trial_successes = 0
        if self.state is CircuitState.HALF_OPEN:
            self._trials += 1

    # -- outcomes ------------------------------------------------------------------------------
    def record_success(self) -> None:
        if not self.config.enabled:
            return
        self.consecutive_failures = 0
        self._count(failed=False)
        if self.state is CircuitState.HALF_OPEN:
            self._trials = max(0, self._trials - 1)
            self._trial_successes += 1
            if self._trial_successes >= self.config.success_threshold:
                self._close()

    def record_failure(self) -> None:
        if not self.config.enabled:
            return
        self.consecutive_failures += 1
        self._count(failed=True)
        if self.state is CircuitState.HALF_OPEN or (
            self.state is CircuitState.CLOSED
            and (
                self.consecutive_failures >= self.config.failure_threshold or self._rate_exceeded()
            )
        ):
            self._open()

    def record_neutral(self) -> None:
        """An attempt that says nothing about the worker (back-pressure, client gone early)."""
        if self.state is CircuitState.HALF_OPEN:
            self._trials = max(0, self._trials - 1)

    def reset(self) -> None:
        """The worker was replaced or came back (health check passed after a restart)."""
        self._close()

    # -- internals -----------------------------------------------------------------------------
    def _open(self) -> None:
        self.state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._trials = 0
        self._trial_successes = 0
        self.opened += 1

    def _close(self) -> None:
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self._trials = 0
        self._trial_successes = 0
        self._totals = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS

    def _count(self, *, failed: bool) -> None:
        now = self._clock()
        slot = int(now / self._bucket_width)
        i = slot % _BUCKETS
        start = slot * self._bucket_width
        if self._bucket_start[i] != start:
            self._bucket_start[i] = start
            self._totals[i] = 0
            self._failures[i] = 0
        self._totals[i] += 1
        if failed:
            self._failures[i] += 1

    def _rate_exceeded(self) -> bool:
        oldest = self._clock() - self.config.window
        total = failures = 0
        for i in range(_BUCKETS):
            if self._bucket_start[i] >= oldest - self._bucket_width:
                total += self._totals[i]
                failures += self._failures[i]
        return total >= self.config.min_requests and failures >= self.config.failure_rate * total
