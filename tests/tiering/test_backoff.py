"""BackoffPolicy: full-jitter waits, the server's Retry-After first, bounded retries."""

from __future__ import annotations

import random

import pytest

from tiering.backoff import BackoffPolicy


def test_full_jitter_waits_spread_between_zero_and_the_capped_exponential() -> None:
    policy = BackoffPolicy(base_s=0.5, cap_s=4.0)
    rng = random.Random(7)
    for attempt, ceiling in ((0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0)):
        waits = [policy.delay(attempt, rng) for _ in range(2000)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert min(waits) < 0.05 * ceiling and max(waits) > 0.95 * ceiling  # full, not partial


def test_server_retry_after_wins_over_the_exponential_schedule_plus_small_jitter() -> None:
    policy = BackoffPolicy(base_s=0.5, cap_s=4.0, retry_after_jitter_s=0.1)
    rng = random.Random(1)
    waits = [policy.delay(0, rng, retry_after_s=7.0) for _ in range(500)]
    assert all(7.0 <= w <= 7.1 for w in waits)
    assert len({round(w, 6) for w in waits}) > 100  # clients do not come back in lockstep
    assert 0.0 <= policy.delay(5, rng, retry_after_s=0.0) <= 0.1


def test_failures_are_bounded_by_max_attempts_counting_the_first() -> None:
    policy = BackoffPolicy(max_attempts=3, max_total_s=1000)
    assert policy.should_retry(1, 0.0, 0.1)
    assert policy.should_retry(2, 0.0, 0.1)
    assert not policy.should_retry(3, 0.0, 0.1)


def test_throttles_do_not_use_up_failure_attempts_but_have_their_own_bound() -> None:
    policy = BackoffPolicy(max_attempts=2, max_throttled_attempts=5, max_total_s=1000)
    assert policy.should_retry(0, 0.0, 0.1, throttled=5)
    assert not policy.should_retry(0, 0.0, 0.1, throttled=6)


def test_total_time_bounds_every_kind_of_retry() -> None:
    policy = BackoffPolicy(max_total_s=10.0)
    assert policy.should_retry(1, 9.0, 1.0)
    assert not policy.should_retry(1, 9.0, 1.5)
    assert not policy.should_retry(0, 2.0, 60.0, throttled=1)  # a Retry-After past the budget


@pytest.mark.parametrize("kwargs", [{"base_s": 0}, {"max_attempts": 0}, {"max_total_s": -1}])
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)  # type: ignore[arg-type]
