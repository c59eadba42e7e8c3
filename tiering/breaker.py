"""A circuit breaker for the API endpoint (closed -> open -> half-open -> closed).

After ``failure_threshold`` consecutive failed requests the breaker opens: no request is
sent for ``reset_after_s``; then one trial request (the probe) is let through (half-open);
its success closes the breaker, its failure opens it again for another period. What counts:
5xx, timeouts, connection errors and malformed replies are failures; any other reply (200,
429, a terminal 4xx) proves the endpoint alive and counts as a success.

Callers decide what waiting documents do (the API tier holds them for up to
``api.breaker.max_wait_s``, then routes them per ``api.breaker.on_open``);
:meth:`CircuitBreaker.seconds_until_trial` tells them how long the breaker stays open.
Every transition is kept (:attr:`CircuitBreaker.transitions`, counted by name such as
``"closed->open"``) and handed to an optional ``on_transition`` callback, so the caller
can log and count it.

Pure: the clock is injected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from enum import IntEnum

__all__ = ["BreakerState", "CircuitBreaker", "Transition"]


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


Transition = Callable[[BreakerState, BreakerState], None]


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open trial."""

    def __init__(
        self,
        failure_threshold: int,
        reset_after_s: float,
        clock: Callable[[], float],
        on_transition: Transition | None = None,
    ) -> None:
        if failure_threshold < 1 or reset_after_s <= 0:
            raise ValueError(
                f"failure_threshold must be >= 1 and reset_after_s > 0, got "
                f"{failure_threshold}, {reset_after_s}"
            )
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._on_transition = on_transition
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self.times_opened = 0
        self.transitions: Counter[str] = Counter()

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._trial_in_flight or self._clock() - self._opened_at >= self.reset_after_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def seconds_until_trial(self) -> float:
        """How long until a trial may go: 0 when closed or when the trial is free; the rest
        of the open period; 0 as well while a trial is in flight (its reply decides)."""
        if self._opened_at is None or self._trial_in_flight:
            return 0.0
        return max(0.0, self._opened_at + self.reset_after_s - self._clock())

    @property
    def trial_in_flight(self) -> bool:
        return self._trial_in_flight

    def allow(self) -> bool:
        """Whether a request may be sent now (claims the single half-open trial)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            self._record(BreakerState.OPEN, BreakerState.HALF_OPEN)
            return True
        return False

    def record_success(self) -> None:
        """The endpoint answered: close the breaker and forget past failures."""
        was = self.state
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False
        if was is not BreakerState.CLOSED:
            self._record(was, BreakerState.CLOSED)

    def record_failure(self) -> None:
        """A failed request: open after the threshold, or at once if it was the trial."""
        self._failures += 1
        was_trial = self._trial_in_flight
        self._trial_in_flight = False
        if was_trial or self._failures >= self.failure_threshold:
            if self._opened_at is None or was_trial:
                self.times_opened += 1
                self._record(BreakerState.HALF_OPEN if was_trial else BreakerState.CLOSED,
                             BreakerState.OPEN)
            self._opened_at = self._clock()

    def _record(self, old: BreakerState, new: BreakerState) -> None:
        self.transitions[f"{old.label}->{new.label}"] += 1
        if self._on_transition is not None:
            self._on_transition(old, new)
