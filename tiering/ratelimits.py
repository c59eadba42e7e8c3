"""Reading a provider's rate-limit feedback: ``x-ratelimit-*`` and ``Retry-After`` headers.

OpenAI sends ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are durations
such as ``"1s"``, ``"6m0s"`` or ``"120ms"``. A 429 carries ``retry-after`` (seconds, or an
HTTP date) and sometimes ``retry-after-ms``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = ["RateLimitState", "parse_duration", "parse_retry_after", "parse_rate_limit_headers"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


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
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_retry_after(headers: Mapping[str, str], now_epoch: float | None = None) -> float | None:
    """Seconds the server asks us to wait, preferring the precise ``retry-after-ms``."""
    lower = {k.lower(): v for k, v in headers.items()}
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
    remaining_requests: int | None
    remaining_tokens: int | None
    reset_requests_s: float | None
    reset_tokens_s: float | None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitState:
    lower = {k.lower(): v for k, v in headers.items()}
    return RateLimitState(
        remaining_requests=_int_or_none(lower.get("x-ratelimit-remaining-requests")),
        remaining_tokens=_int_or_none(lower.get("x-ratelimit-remaining-tokens")),
        reset_requests_s=parse_duration(lower.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration(lower.get("x-ratelimit-reset-tokens")),
    )
