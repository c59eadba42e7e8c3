"""Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
Jitter", 2015): wait = uniform(0, min(cap, base * 2**attempt)).

Pure: the random source is injected, so tests fix it. A server-provided ``Retry-After``
takes precedence over the computed wait (we never retry sooner than the server asks).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["BackoffPolicy"]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    base_s: float = 0.5
    cap_s: float = 30.0
    max_attempts: int = 6
    max_total_s: float = 300.0

    def delay(self, attempt: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        ceiling = min(self.cap_s, self.base_s * (2**attempt))
        jittered = rng.uniform(0.0, ceiling)
        if retry_after_s is not None and retry_after_s > 0:
            # Obey the server, plus a little jitter so many clients do not return in lockstep.
            return retry_after_s + rng.uniform(0.0, min(1.0, self.base_s))
        return jittered

    def should_retry(self, attempt: int, elapsed_s: float, next_delay_s: float) -> bool:
        """Whether attempt ``attempt + 1`` may run given time already spent."""
        return attempt + 1 < self.max_attempts and elapsed_s + next_delay_s <= self.max_total_s
