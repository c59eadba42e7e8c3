"""Rate limits of a provider: its feedback headers, and a client-side sliding window.

OpenAI sends ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` on every reply;
resets are durations such as ``"1s"``, ``"6m0s"`` or ``"120ms"`` ("the time until the rate
limit resets to its initial state"). A 429 carries ``retry-after`` (seconds, or an HTTP
date) and sometimes the precise ``retry-after-ms``.

Providers count usage over a **sliding window** (OpenAI: requests and tokens per minute):
a request fits if it fits with everything admitted in the last minute, and capacity comes
back only as old requests leave the window. :class:`SlidingWindow` is the client's mirror
of one such limit. It is hand-written because a leaky bucket (aiolimiter's
``AsyncLimiter``) refills continuously at ``limit / 60`` per second: after a full burst it
admits new work at once while the provider still counts the burst, so a client paced by a
bucket overruns the window by up to a whole limit in its first minute and keeps running
into 429s at the edge afterwards. The window here:

* counts a request from the moment it is sent (in flight, at an estimate that errs high)
  until one window after its **reply** (a reply comes after the provider admitted it, so
  the client frees capacity no earlier than the provider does);
* replaces the estimate by what the provider billed once the reply says;
* follows the provider's own figures as the authority (:meth:`SlidingWindow.follow`):
  when ``x-ratelimit-remaining-*`` reports less room than the window sees (another
  client on the key, an earlier run), the difference is held until ``x-ratelimit-reset-*``
  says the provider's window has emptied.

Pure: no clock is read (callers pass ``now``) and nothing waits here.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = [
    "RateLimitState",
    "parse_duration",
    "parse_retry_after",
    "parse_rate_limit_headers",
    "server_wait_s",
    "SlidingWindow",
    "WindowTicket",
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


def server_wait_s(headers: Mapping[str, str], now_epoch: float | None = None) -> float | None:
    """How long a refused request should wait before it is sent again: ``Retry-After``
    (or ``retry-after-ms``) if given; None when the server said nothing, and then the
    caller's :class:`SlidingWindow`, corrected by :meth:`SlidingWindow.follow`, decides."""
    return parse_retry_after(headers, now_epoch)


@dataclass(frozen=True, slots=True)
class WindowTicket:
    """A request's place in a :class:`SlidingWindow` while it is in flight."""

    id: int
    amount: float


class SlidingWindow:
    """The client's view of one provider limit over a sliding window (see the module doc).

    Entries are in flight (no end yet), settled (they leave ``window_s`` after the reply)
    or held for the provider (usage the provider reported and we did not send)."""

    def __init__(self, limit: float, window_s: float = 60.0) -> None:
        if limit <= 0 or window_s <= 0:
            raise ValueError(f"limit and window_s must be positive, got {limit}, {window_s}")
        self.limit = float(limit)
        self.window_s = window_s
        self._in_flight: dict[int, float] = {}
        self._leaving: list[tuple[float, float]] = []  # (leaves at, amount), settled or held
        self._ids = itertools.count()

    def _expire(self, now: float) -> None:
        self._leaving = [(at, n) for at, n in self._leaving if at > now]

    def used(self, now: float) -> float:
        """Everything the window holds at ``now``: in flight, settled and held."""
        self._expire(now)
        return sum(self._in_flight.values()) + sum(n for _, n in self._leaving)

    def wait_s(self, amount: float, now: float) -> float | None:
        """Seconds until ``amount`` fits: 0 now; a time when enough settled usage has left;
        None when only requests still in flight can make room (wait for their replies)."""
        if amount > self.limit:
            raise ValueError(f"{amount} can never fit a window of {self.limit}")
        excess = self.used(now) + amount - self.limit
        if excess <= 0:
            return 0.0
        for at, n in sorted(self._leaving):
            excess -= n
            if excess <= 0:
                return at - now
        return None

    def take(self, amount: float) -> WindowTicket:
        """Count a request being sent now, at an estimate that should err high."""
        ticket = WindowTicket(next(self._ids), float(amount))
        self._in_flight[ticket.id] = ticket.amount
        return ticket

    def settle(self, ticket: WindowTicket, amount: float, now: float) -> None:
        """The provider admitted the request and counted ``amount``: it leaves one window
        after ``now`` (its reply)."""
        if self._in_flight.pop(ticket.id, None) is not None:
            self._leaving.append((now + self.window_s, float(amount)))

    def cancel(self, ticket: WindowTicket) -> None:
        """The provider refused the request: it took nothing."""
        self._in_flight.pop(ticket.id, None)

    def follow(self, remaining: float, reset_s: float | None, now: float) -> float:
        """Hold what the provider counts beyond our view; returns the amount held.

        ``remaining`` is the provider's room when it answered; if ours is larger, the
        difference is usage we did not send, held until the provider's window is empty
        again (``reset_s``, at most one window; a full window when it is not given)."""
        excess = (self.limit - self.used(now)) - max(0.0, remaining)
        if excess <= 0:
            return 0.0
        hold_s = self.window_s if reset_s is None else min(max(reset_s, 0.0), self.window_s)
        if hold_s > 0:
            self._leaving.append((now + hold_s, excess))
        return excess

    def set_limit(self, limit: float) -> None:
        """Use the provider's own limit (``x-ratelimit-limit-*``) from now on."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        self.limit = float(limit)
