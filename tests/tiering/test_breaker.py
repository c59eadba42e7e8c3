"""CircuitBreaker: closed -> open after consecutive failures -> one half-open trial."""

from __future__ import annotations

import pytest

from tiering.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(3, 10.0, Clock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # the streak is broken
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.allow() and breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    assert breaker.times_opened == 1


def test_open_breaker_lets_exactly_one_trial_through_after_the_reset_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure()
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # the trial is in flight; everyone else still short-circuits
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_failed_trial_reopens_for_another_full_period() -> None:
    clock = Clock()
    breaker = CircuitBreaker(2, 5.0, clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and breaker.times_opened == 2
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_late_failures_while_open_do_not_count_as_new_openings() -> None:
    breaker = CircuitBreaker(1, 5.0, Clock())
    for _ in range(4):
        breaker.record_failure()
    assert breaker.times_opened == 1


@pytest.mark.parametrize(("threshold", "reset"), [(0, 1.0), (1, 0.0)])
def test_nonsense_breakers_are_refused(threshold: int, reset: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold, reset, Clock())


def test_every_transition_is_counted_and_reported_with_the_wait_until_the_trial() -> None:
    clock = Clock()
    seen: list[tuple[str, str]] = []
    breaker = CircuitBreaker(1, 10.0, clock, on_transition=lambda a, b: seen.append((a.label, b.label)))
    breaker.record_failure()
    assert breaker.seconds_until_trial() == 10.0
    clock.now += 4.0
    assert breaker.seconds_until_trial() == 6.0
    clock.now += 6.0
    assert breaker.seconds_until_trial() == 0.0 and breaker.allow()  # the probe
    breaker.record_failure()  # the probe failed
    clock.now += 10.0
    assert breaker.allow()
    breaker.record_success()
    assert seen == [("closed", "open"), ("open", "half-open"), ("half-open", "open"),
                    ("open", "half-open"), ("half-open", "closed")]
    assert breaker.transitions == {"closed->open": 1, "open->half-open": 2, "half-open->open": 1,
                                   "half-open->closed": 1}

