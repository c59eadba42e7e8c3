"""Reading a provider's rate-limit feedback: ``x-ratelimit-*`` and ``Retry-After`` headers.

OpenAI sends ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` on every reply;
resets are durations such as ``"1s"``, ``"6m0s"`` or ``"120ms"``. A 429 carries
``retry-after`` (seconds, or an HTTP date) and sometimes the precise ``retry-after-ms``.

The provider's limits are continuously refilling buckets (``limit`` per minute, refilled
``limit / 60`` per second), so the wait for ``needed`` units when ``remaining`` are left is
the deficit over the refill rate (:func:`deficit_wait_s`), not the time until the bucket is
full again (``reset``, which is what a window that empties at once would need).
:func:`synced_level` lowers a local bucket's room to what the provider reports.

Pure functions over header mappings; no clock is read (callers pass ``now_epoch``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = [
    "RateLimitState",
    "parse_duration",
    "parse_retry_after",
    "parse_rate_limit_headers",
    "deficit_wait_s",
    "server_wait_s",
    "synced_level",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | None) -> float | None:
    """``"6m0s"`` -> 360.0; ``"120ms"`` -> 0.12; plain numbers are seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts:
        return None
    return sum(float(n) * _SCALE[u] for n, u in parts)


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def parse_retry_after(headers: Mapping[str, str], now_epoch: float | None = None) -> float | None:
    """Seconds the server asks us to wait, preferring the precise ``retry-after-ms``."""
    lower = _lowered(headers)
    ms = lower.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = lower.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    if now_epoch is None:
        return None
    try:
        return max(0.0, parsedate_to_datetime(ra).timestamp() - now_epoch)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """What one reply's ``x-ratelimit-*`` headers say (None where a header is absent)."""

    limit_requests: int | None
    limit_tokens: int | None
    remaining_requests: int | None
    remaining_tokens: int | None
    reset_requests_s: float | None
    reset_tokens_s: float | None

    @property
    def known(self) -> bool:
        """Whether the reply carried any remaining-budget header at all."""
        return self.remaining_requests is not None or self.remaining_tokens is not None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitState:
    lower = _lowered(headers)
    return RateLimitState(
        limit_requests=_int_or_none(lower.get("x-ratelimit-limit-requests")),
        limit_tokens=_int_or_none(lower.get("x-ratelimit-limit-tokens")),
        remaining_requests=_int_or_none(lower.get("x-ratelimit-remaining-requests")),
        remaining_tokens=_int_or_none(lower.get("x-ratelimit-remaining-tokens")),
        reset_requests_s=parse_duration(lower.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration(lower.get("x-ratelimit-reset-tokens")),
    )


def deficit_wait_s(remaining: float, needed: float, limit_per_minute: float) -> float:
    """Seconds until a bucket refilling ``limit_per_minute`` holds ``needed`` units."""
    if limit_per_minute <= 0:
        raise ValueError(f"limit_per_minute must be positive, got {limit_per_minute}")
    return max(0.0, needed - remaining) / (limit_per_minute / 60.0)


def _bucket_wait(remaining: int | None, limit: int | None, reset_s: float | None, needed: int) -> float:
    if remaining is None or remaining >= needed:
        return 0.0
    if limit:
        return deficit_wait_s(remaining, needed, limit)
    return reset_s or 0.0  # no limit header: the full reset is the only safe figure


def server_wait_s(
    headers: Mapping[str, str], needed_tokens: int, now_epoch: float | None = None
) -> float | None:
    """How long a throttled request should wait: ``Retry-After`` if given, else the deficit
    of the scarcer bucket from the ``x-ratelimit-*`` headers; None when nothing is said."""
    told = parse_retry_after(headers, now_epoch)
    if told is not None:
        return told
    state = parse_rate_limit_headers(headers)
    if not state.known:
        return None
    return max(
        _bucket_wait(state.remaining_requests, state.limit_requests, state.reset_requests_s, 1),
        _bucket_wait(state.remaining_tokens, state.limit_tokens, state.reset_tokens_s, needed_tokens),
    )


def synced_level(level: float, capacity: float, server_remaining: float) -> float:
    """A local leaky bucket's level after the provider reports ``server_remaining``.

    The local room (``capacity - level``) never exceeds what the provider says is left, so
    a bucket the provider has already partly used (by an earlier run or another client) is
    not overrun; a provider that reports more room leaves the local level alone.
    """
    return min(capacity, max(level, capacity - server_remaining))
