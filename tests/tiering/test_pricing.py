"""Prices, exact cost, apportioning a bill to inputs, and the runtime spend guard."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from tiering.pricing import (
    PRICE_READ_ON,
    PRICE_TABLE,
    Price,
    SpendGuard,
    apportion,
    cost_usd,
    exact_cost_usd,
    price_for,
)


def test_price_table_cites_its_source_and_date() -> None:
    small = PRICE_TABLE["text-embedding-3-small"]
    assert small.per_token == Fraction(2, 100_000_000)
    assert "openai.com" in small.source and PRICE_READ_ON in small.source


def test_override_wins_and_unknown_models_raise() -> None:
    assert price_for("any-model", 2.0).per_token == Fraction(2, 1_000_000)
    with pytest.raises(KeyError):
        price_for("no-such-model")


def test_cost_is_exact_where_floats_drift() -> None:
    price = Price("m", "0.1")
    assert 3 * 0.1 / 1_000_000 != 3e-07  # the float way drifts ...
    assert sum(exact_cost_usd(1, price) for _ in range(3)) == exact_cost_usd(3, price) == Fraction(3, 10**7)
    assert exact_cost_usd(10_000_000, Price("m", "0.13")) == Fraction(13, 10)
    assert cost_usd(10_000_000, Price("m", "0.13")) == 1.3


def test_apportion_sums_exactly_and_follows_the_weights() -> None:
    assert apportion(100, [1, 1, 2]) == [25, 25, 50]
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]  # ties go to the earlier input
    assert apportion(7, [0, 0]) == [4, 3]
    assert apportion(0, [3, 4]) == [0, 0]
    assert apportion(0, []) == []
    with pytest.raises(ValueError):
        apportion(5, [])


def test_apportion_random_bills_always_add_up_and_stay_within_one_token() -> None:
    rng = random.Random(5)
    for _ in range(500):
        weights = [rng.randint(0, 500) for _ in range(rng.randint(1, 40))]
        total = rng.randint(0, 20_000)
        shares = apportion(total, weights)
        assert sum(shares) == total
        if sum(weights):
            for share, w in zip(shares, weights, strict=True):
                assert abs(share - Fraction(total * w, sum(weights))) < 1


def test_spend_guard_refuses_a_request_that_would_pass_the_cap() -> None:
    guard = SpendGuard(cap_usd=1.0, price=Price("m", "1000000"))  # $1 per token
    assert guard.try_reserve(1)
    assert not guard.try_reserve(1)  # in flight already counts
    guard.settle(1, 0)               # the bill replaces the estimate
    assert guard.try_reserve(1)


def test_spend_guard_counts_billed_tokens_not_estimates() -> None:
    guard = SpendGuard(cap_usd=10.0, price=Price("m", "1000000"))
    assert guard.try_reserve(8)
    guard.settle(8, 6)
    assert guard.billed_usd == 6 and guard.reserved_usd == 0
    assert guard.try_reserve(4) and not guard.try_reserve(1)
    guard.release(4)
    assert guard.try_reserve(4)


def test_spend_guard_without_cap_admits_everything_and_a_cap_needs_a_price() -> None:
    guard = SpendGuard(None, None)
    assert all(guard.try_reserve(10**9) for _ in range(3))
    with pytest.raises(ValueError):
        SpendGuard(1.0, None)


def test_spend_guard_knows_whether_waiting_for_replies_in_flight_can_help() -> None:
    guard = SpendGuard(100.0, Price("m", "1000000"))  # cap = 100 tokens
    assert guard.try_reserve(60)  # an upper bound, in flight
    assert not guard.fits(50) and guard.in_flight and guard.could_ever_fit(50)
    guard.settle(60, 15)  # the bill is far below the bound
    assert not guard.in_flight and guard.try_reserve(50)
    assert not guard.could_ever_fit(86)  # 15 billed + 86 > 100 whatever comes back


def test_token_upper_bound_is_never_below_a_real_tokenizers_count() -> None:
    """The bound the spend guard reserves: UTF-8 bytes + special tokens. Checked against
    the real WordPiece tokenizer on text where the estimate is far too low."""
    from tests.fakes.openai_server import FakeServerConfig, billed_tokens
    from tiering.chunking import estimate_tokens, token_upper_bound

    wordpiece = FakeServerConfig(token_count="tokenizer")
    for text in ("XKQ7ZB PLMTRV QZXW9K", "naïve café — 東京タワー 🏠", "a", "https://x.io/?q=Zz9-_~"):
        assert billed_tokens(text, wordpiece) + 2 <= token_upper_bound(text)
        assert token_upper_bound(text) >= estimate_tokens(text)
