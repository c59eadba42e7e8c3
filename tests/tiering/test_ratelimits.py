"""Rate-limit feedback: header parsing, deficit waits, following the provider's buckets."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from tiering.ratelimits import (
    deficit_wait_s,
    parse_duration,
    parse_rate_limit_headers,
    parse_retry_after,
    server_wait_s,
    synced_level,
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


def test_deficit_wait_uses_the_refill_rate_not_the_full_reset() -> None:
    # 60,000 TPM refills 1,000 tokens a second: 900 missing tokens take 0.9 s.
    assert deficit_wait_s(100, 1000, 60_000) == pytest.approx(0.9)
    assert deficit_wait_s(5000, 1000, 60_000) == 0.0
    with pytest.raises(ValueError):
        deficit_wait_s(0, 1, 0)


def test_server_wait_takes_retry_after_else_the_scarcer_bucket_deficit() -> None:
    headers = {"x-ratelimit-limit-tokens": "60000", "x-ratelimit-remaining-tokens": "100",
               "x-ratelimit-reset-tokens": "59.9s", "x-ratelimit-limit-requests": "60",
               "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"}
    assert server_wait_s(headers, 1100) == pytest.approx(1.0)  # tokens: 1000 / 1000 per s
    assert server_wait_s(headers, 300) == pytest.approx(1.0)   # requests: 1 / (60 / 60 s)
    assert server_wait_s(headers | {"retry-after-ms": "250"}, 1100) == 0.25
    no_limit = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "7s"}
    assert server_wait_s(no_limit, 10) == 7.0  # without the limit only the reset is safe
    assert server_wait_s({}, 10) is None


def test_synced_level_never_leaves_more_room_than_the_provider_reports() -> None:
    assert synced_level(level=0.0, capacity=1000, server_remaining=300) == 700
    assert synced_level(level=900.0, capacity=1000, server_remaining=300) == 900
    assert synced_level(level=0.0, capacity=1000, server_remaining=5000) == 0.0
    assert synced_level(level=0.0, capacity=1000, server_remaining=-5) == 1000
