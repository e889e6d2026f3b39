"""The per-worker circuit breaker, on a fake clock."""

from __future__ import annotations

import pytest

from herdsman.routing import CircuitBreaker, CircuitConfig, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(**overrides: object) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    config = CircuitConfig(**{"failure_rate": 1.1, **overrides})  # type: ignore[arg-type]
    return CircuitBreaker(config, clock), clock


def test_opens_after_consecutive_failures_only() -> None:
    cb, _ = breaker(failure_threshold=3)
    for _ in range(2):
        cb.record_failure()
    cb.record_success()  # the run of failures is broken
    for _ in range(2):
        cb.record_failure()
    assert cb.state is CircuitState.CLOSED and cb.allows()
    cb.record_failure()
    assert cb.state is CircuitState.OPEN and not cb.allows()
    assert cb.opened == 1


def test_half_open_after_the_timeout_then_closes_after_successes() -> None:
    cb, clock = breaker(failure_threshold=1, success_threshold=2, open_seconds=60)
    cb.record_failure()
    clock.now += 59.9
    assert not cb.allows()
    clock.now += 0.2
    assert cb.allows()
    cb.on_attempt()
    assert cb.state is CircuitState.HALF_OPEN
    cb.on_attempt()
    # Two trials in flight: a third request is not let through until one ends.
    assert not cb.allows()
    cb.record_success()
    assert cb.state is CircuitState.HALF_OPEN and cb.allows()
    cb.record_success()
    assert cb.state is CircuitState.CLOSED and cb.consecutive_failures == 0


def test_a_failed_trial_opens_it_again_for_a_full_timeout() -> None:
    cb, clock = breaker(failure_threshold=1, open_seconds=10)
    cb.record_failure()
    clock.now += 10
    cb.on_attempt()
    cb.record_failure()
    assert cb.state is CircuitState.OPEN and cb.opened == 2
    clock.now += 9
    assert not cb.allows()
    clock.now += 1
    assert cb.allows()


def test_neutral_outcomes_free_the_trial_slot_and_count_for_nothing() -> None:
    cb, clock = breaker(failure_threshold=1, success_threshold=1, open_seconds=1)
    cb.record_failure()
    clock.now += 1
    cb.on_attempt()
    assert not cb.allows()
    cb.record_neutral()  # back-pressure: says nothing about the worker
    assert cb.state is CircuitState.HALF_OPEN and cb.allows()


def test_failure_rate_over_the_window_opens_it() -> None:
    cb, clock = breaker(failure_threshold=100, failure_rate=0.5, min_requests=10, window=60)
    # Alternating: never two failures in a row, but half of all requests fail.
    for i in range(9):
        (cb.record_failure if i % 2 else cb.record_success)()
        clock.now += 1
    assert cb.state is CircuitState.CLOSED  # 9 requests: under min_requests
    cb.record_failure()
    assert cb.state is CircuitState.OPEN


def test_old_outcomes_leave_the_window() -> None:
    cb, clock = breaker(failure_threshold=100, failure_rate=0.5, min_requests=4, window=60)
    for _ in range(3):
        cb.record_failure()
    clock.now += 200  # long ago now
    for _ in range(3):
        cb.record_success()
    cb.record_failure()
    assert cb.state is CircuitState.CLOSED  # 1 failure of 4 in the window


def test_disabled_never_opens() -> None:
    cb, _ = breaker(enabled=False, failure_threshold=1)
    for _ in range(50):
        cb.record_failure()
    assert cb.allows() and cb.state is CircuitState.CLOSED


def test_reset_closes() -> None:
    cb, _ = breaker(failure_threshold=1)
    cb.record_failure()
    cb.reset()
    assert cb.state is CircuitState.CLOSED and cb.allows()


@pytest.mark.parametrize("retry", [0, 1, 5, 30])
def test_retry_backoff_grows_is_capped_and_jittered(retry: int) -> None:
    from herdsman.pipeline.retry import RetryPolicy

    policy = RetryPolicy(initial_backoff=0.05, max_backoff=2.0, multiplier=1.5, jitter=0.2)
    base = min(2.0, 0.05 * 1.5**retry)
    assert policy.backoff(retry, rng=lambda: 0.5) == pytest.approx(base)
    assert policy.backoff(retry, rng=lambda: 0.0) == pytest.approx(base * 0.8)
    assert policy.backoff(retry, rng=lambda: 1.0) == pytest.approx(base * 1.2)
