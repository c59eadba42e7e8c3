"""Rank normalisation spreads scores over [0, 1] on any corpus; quantiles agree with it."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tiering.normalization import normalize_with_quantiles, rank_normalize, uses_rank_normalization


def test_short_documents_that_all_score_low_spread_over_the_unit_interval() -> None:
    raw = [0.03 + 0.0005 * i for i in range(1000)]  # the shipped prior on short entries: all < 0.54
    shares = rank_normalize(raw)
    assert min(shares) < 0.01 and max(shares) > 0.99
    assert sum(s >= 0.7 for s in shares) == 300  # threshold 0.7 = the run's top 30%


def test_ties_share_their_mid_rank_and_a_constant_run_is_half() -> None:
    assert rank_normalize([0.2, 0.2, 0.2]) == [0.5, 0.5, 0.5]
    assert rank_normalize([0.1, 0.2, 0.2, 0.3]) == [0.125, 0.5, 0.5, 0.875]
    assert rank_normalize([]) == []


@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=300))
def test_quantile_mapping_tracks_the_exact_rank_share(scores: list[float]) -> None:
    quantiles = list(np.quantile(scores, np.linspace(0, 1, 1001), method="inverted_cdf"))
    exact = rank_normalize(scores)
    for s, e in zip(scores, exact, strict=True):
        approx = normalize_with_quantiles(s, quantiles)
        assert 0.0 <= approx <= 1.0
        assert abs(approx - e) <= 1.0 / len(scores) + 0.51 * sum(x == s for x in scores) / len(scores) + 0.002


def test_order_is_kept() -> None:
    rng = np.random.default_rng(0)
    scores = list(rng.random(200))
    q = list(np.quantile(scores, np.linspace(0, 1, 101)))
    mapped = [normalize_with_quantiles(s, q) for s in sorted(scores)]
    assert mapped == sorted(mapped)


def test_auto_normalises_the_shipped_classifier_only() -> None:
    assert uses_rank_normalization("auto", None) and not uses_rank_normalization("auto", "m.json")
    assert uses_rank_normalization("rank", "m.json") and not uses_rank_normalization("none", None)
