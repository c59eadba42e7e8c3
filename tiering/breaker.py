"""A circuit breaker for the API endpoint (closed -> open -> half-open -> closed).

After ``failure_threshold`` consecutive failed requests the breaker opens: calls fail fast
for ``reset_after_s``, then one trial request is let through (half-open); its success closes
the breaker, its failure opens it again. What counts: 5xx, timeouts, connection errors and
malformed replies are failures; any other reply (200, 429, a terminal 4xx) proves the
endpoint alive and counts as a success. While it is open, the API tier routes documents to
the local tier or the dead-letter output (``api.breaker.on_open``).

Pure: the clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open trial."""

    def __init__(self, failure_threshold: int, reset_after_s: float, clock: Callable[[], float]) -> None:
        if failure_threshold < 1 or reset_after_s <= 0:
            raise ValueError(
                f"failure_threshold must be >= 1 and reset_after_s > 0, got "
                f"{failure_threshold}, {reset_after_s}"
            )
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_after_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a request may be sent now (claims the single half-open trial)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        """The endpoint answered: close the breaker and forget past failures."""
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        """A failed request: open after the threshold, or at once if it was the trial."""
        self._failures += 1
        was_trial = self._trial_in_flight
        self._trial_in_flight = False
        if was_trial or self._failures >= self.failure_threshold:
            if self._opened_at is None or was_trial:
                self.times_opened += 1
            self._opened_at = self._clock()
