"""Rate-limit feedback (header parsing) and the client's sliding window of a provider limit."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from tiering.ratelimits import (
    SlidingWindow,
    parse_duration,
    parse_rate_limit_headers,
    parse_retry_after,
    server_wait_s,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6m0s", 360.0), ("1s", 1.0), ("120ms", 0.12), ("1h2m3.5s", 3723.5), ("2.5", 2.5),
     ("", None), (None, None), ("soon", None)],
)
def test_parse_duration_reads_openai_reset_formats(text: str | None, seconds: float | None) -> None:
    got = parse_duration(text)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


def test_retry_after_prefers_milliseconds_then_seconds_then_a_date() -> None:
    assert parse_retry_after({"Retry-After": "2", "retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    when = datetime(2030, 1, 1, 0, 0, 10, tzinfo=UTC)
    now = when.timestamp() - 10
    assert parse_retry_after({"retry-after": format_datetime(when, usegmt=True)}, now) == pytest.approx(10)
    assert parse_retry_after({"retry-after": "garbage"}, now) is None
    assert parse_retry_after({}) is None


def test_rate_limit_headers_are_read_case_insensitively_limits_included() -> None:
    state = parse_rate_limit_headers({
        "X-RateLimit-Limit-Tokens": "60000", "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "59.9s", "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "599", "x-ratelimit-reset-requests": "100ms",
    })
    assert (state.limit_tokens, state.remaining_tokens, state.reset_tokens_s) == (60000, 100, 59.9)
    assert (state.limit_requests, state.remaining_requests, state.reset_requests_s) == (600, 599, 0.1)
    assert state.known and not parse_rate_limit_headers({}).known


def test_server_wait_is_the_retry_after_or_nothing() -> None:
    headers = {"x-ratelimit-limit-tokens": "60000", "x-ratelimit-remaining-tokens": "100",
               "x-ratelimit-reset-tokens": "59.9s"}
    assert server_wait_s(headers | {"retry-after-ms": "250"}) == 0.25
    assert server_wait_s(headers) is None  # the caller's window, corrected by follow(), decides


def test_window_frees_capacity_only_when_a_request_leaves_it_one_window_after_its_reply() -> None:
    window = SlidingWindow(1000, window_s=60)
    sent = window.take(800)  # in flight at an estimate
    assert window.wait_s(300, now=0) is None  # only the reply can tell: wait for it
    window.settle(sent, 700, now=2.0)  # billed 700, replied at t=2
    assert window.wait_s(300, now=2.0) == 0.0
    assert window.wait_s(400, now=30.0) == pytest.approx(32.0)  # a bucket would have refilled
    assert window.wait_s(400, now=62.0) == 0.0 and window.used(62.0) == 0


def test_window_waits_for_the_oldest_settled_requests_first() -> None:
    window = SlidingWindow(100, window_s=10)
    for at, n in ((0.0, 40), (1.0, 30), (2.0, 30)):
        window.settle(window.take(n), n, now=at)
    assert window.wait_s(50, now=3.0) == pytest.approx(8.0)  # 40 (t=10) and 30 (t=11) must leave
    assert window.wait_s(30, now=3.0) == pytest.approx(7.0)
    with pytest.raises(ValueError):
        window.wait_s(101, now=3.0)


def test_cancelled_requests_take_nothing() -> None:
    window = SlidingWindow(10)
    window.cancel(window.take(10))
    assert window.used(0.0) == 0 and window.wait_s(10, 0.0) == 0.0


def test_follow_holds_what_the_provider_counts_beyond_our_view_until_its_reset() -> None:
    window = SlidingWindow(1000, window_s=60)
    window.settle(window.take(100), 100, now=0.0)
    held = window.follow(remaining=300, reset_s=20.0, now=0.0)  # someone else used 600
    assert held == 600 and window.used(0.0) == 700
    assert window.wait_s(400, now=1.0) == pytest.approx(19.0)  # the provider's reset
    assert window.follow(remaining=300, reset_s=20.0, now=1.0) == 0  # nothing new: no double count
    assert window.follow(remaining=5000, reset_s=None, now=1.0) == 0  # more room: keep ours
    window.follow(remaining=0, reset_s=None, now=1.0)  # no reset header: hold a full window
    assert window.wait_s(1, now=60.9) is not None and window.used(61.5) == 0


def test_a_lower_provider_limit_replaces_ours() -> None:
    window = SlidingWindow(1000)
    window.set_limit(400)
    assert window.wait_s(401 - 1, now=0.0) == 0.0
    with pytest.raises(ValueError):
        window.wait_s(401, now=0.0)
