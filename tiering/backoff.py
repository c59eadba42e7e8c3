"""Retry timing for the API tier's one retry layer: exponential backoff with full jitter.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015): after failed
attempt ``n`` (0-based) wait ``uniform(0, min(cap, base * 2**n))``, so clients that failed
together do not come back together and a recovering service is not stampeded.

A server-provided wait (``Retry-After`` on a 429 or 503) takes precedence: we never come
back sooner than the server asks, plus a small jitter. Two budgets bound a request:
*failures* (5xx, timeouts, connection errors, malformed replies) count against
``max_attempts``; *throttles* (429s) are the server pacing us, not failing, so they count
against the larger ``max_throttled_attempts``; both are bounded by ``max_total_s``.

Pure: the random source is injected, so tests fix it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["BackoffPolicy"]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How long to wait between attempts of one request, and when to give up."""

    base_s: float = 0.5
    cap_s: float = 30.0
    max_attempts: int = 6
    """Attempts per request, the first included, counting only failed ones (not 429s)."""
    max_total_s: float = 300.0
    """Give up once the time spent plus the next wait would pass this."""
    max_throttled_attempts: int = 100
    """429 replies tolerated per request (``max_total_s`` usually binds first)."""
    retry_after_jitter_s: float = 0.1
    """Upper bound of the jitter added on top of a server-provided wait."""

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s <= 0 or self.max_total_s <= 0:
            raise ValueError(f"backoff times must be positive: {self!r}")
        if self.max_attempts < 1 or self.max_throttled_attempts < 0:
            raise ValueError(f"max_attempts must be >= 1 and max_throttled_attempts >= 0: {self!r}")

    def delay(self, attempt: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based) of one kind.

        ``retry_after_s`` (the server's own wait) wins over the exponential schedule.
        """
        if retry_after_s is not None and retry_after_s >= 0:
            return retry_after_s + rng.uniform(0.0, self.retry_after_jitter_s)
        ceiling = min(self.cap_s, self.base_s * (2**attempt))
        return rng.uniform(0.0, ceiling)

    def should_retry(
        self, failures: int, elapsed_s: float, next_delay_s: float, throttled: int = 0
    ) -> bool:
        """Whether to try again after ``failures`` failed and ``throttled`` 429'd attempts."""
        return (
            failures < self.max_attempts
            and throttled <= self.max_throttled_attempts
            and elapsed_s + next_delay_s <= self.max_total_s
        )
