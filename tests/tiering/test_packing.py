"""pack_requests: requests filled up to the provider's limits, nothing over a limit sent."""

from __future__ import annotations

import random

import pytest

from tiering.packing import RequestLimits, pack_grouped, pack_requests


def test_requests_close_at_the_token_limit_and_keep_order() -> None:
    packing = pack_requests([40, 40, 30, 50, 10], RequestLimits(10, 100, 60))
    assert packing.requests == ((0, 1), (2, 3, 4))
    assert packing.oversized == ()


def test_requests_close_at_the_input_count_limit() -> None:
    packing = pack_requests([1] * 7, RequestLimits(3, 1000, 10))
    assert packing.requests == ((0, 1, 2), (3, 4, 5), (6,))


def test_a_request_is_filled_to_the_last_token() -> None:
    packing = pack_requests([50, 50, 1], RequestLimits(10, 100, 100))
    assert packing.requests == ((0, 1), (2,))


def test_inputs_over_the_per_input_limit_are_reported_and_never_packed() -> None:
    packing = pack_requests([5, 61, 5, 200], RequestLimits(10, 100, 60))
    assert packing.oversized == (1, 3)
    assert packing.requests == ((0, 2),)


def test_capped_limits_shrink_tokens_per_request_and_per_input() -> None:
    limits = RequestLimits(2048, 300_000, 8192).capped(5000)
    assert limits == RequestLimits(2048, 5000, 5000)
    assert RequestLimits(2048, 300_000, 8192).capped(10**9) == RequestLimits(2048, 300_000, 8192)


def test_random_inputs_every_index_once_and_no_request_over_a_limit() -> None:
    rng = random.Random(3)
    limits = RequestLimits(16, 500, 120)
    for _ in range(200):
        counts = [rng.randint(1, 150) for _ in range(rng.randint(0, 120))]
        packing = pack_requests(counts, limits)
        sent = [i for req in packing.requests for i in req]
        assert sorted(sent + list(packing.oversized)) == list(range(len(counts)))
        assert sent == sorted(sent)
        for req in packing.requests:
            assert len(req) <= limits.max_inputs
            assert sum(counts[i] for i in req) <= limits.max_tokens
            assert all(counts[i] <= limits.max_tokens_per_input for i in req)
        assert all(counts[i] > limits.max_tokens_per_input for i in packing.oversized)


def test_zero_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RequestLimits(0, 100, 10)


def test_grouped_packing_closes_a_request_early_rather_than_split_a_group() -> None:
    limits = RequestLimits(10, 30, 30)
    assert pack_requests([10, 10, 10, 10], limits).requests == ((0, 1, 2), (3,))
    packing = pack_grouped([10, 10, 10, 10], [0, 1, 1, 1], limits)
    assert packing.requests == ((0,), (1, 2, 3))


def test_grouped_packing_fills_requests_when_groups_fit_and_respects_input_count() -> None:
    packing = pack_grouped([5, 5, 5, 5, 5], [0, 0, 1, 2, 2], RequestLimits(3, 100, 10))
    assert packing.requests == ((0, 1, 2), (3, 4))


def test_a_group_larger_than_a_request_spans_requests_from_a_fresh_one() -> None:
    packing = pack_grouped([10, 20, 20, 20, 5], [0, 1, 1, 1, 2], RequestLimits(10, 40, 40))
    assert packing.requests == ((0,), (1, 2), (3, 4))


def test_grouped_packing_reports_oversized_inputs_and_checks_lengths() -> None:
    packing = pack_grouped([5, 61, 5], [0, 0, 0], RequestLimits(10, 100, 60))
    assert packing.requests == ((0, 2),) and packing.oversized == (1,)
    with pytest.raises(ValueError, match="group ids"):
        pack_grouped([1, 2], [0], RequestLimits(10, 100, 60))
