"""What-if policies: the budget planner spends the budget by value per dollar."""

from __future__ import annotations

import numpy as np

from tiering.fusion import FusionMethod
from tiering.policies import PolicyInputs, premium_selection, what_if_policies


def _inputs(threshold: float | None = None) -> PolicyInputs:
    ids = tuple(f"d{i}" for i in range(100))
    scores = tuple(i / 100 for i in range(100))
    return PolicyInputs(ids, scores, tuple(1.0 for _ in ids), "local", "premium", threshold)


def test_budget_buys_the_best_value_per_dollar_until_spent() -> None:
    chosen = premium_selection(_inputs(), 30.0)
    assert chosen.sum() == 30 and chosen[70:].all() and not chosen[:70].any()


def test_a_trained_routers_threshold_still_applies_under_a_budget() -> None:
    chosen = premium_selection(_inputs(threshold=0.9), 30.0)
    assert chosen.sum() == 10 and chosen[90:].all()


def test_what_if_policies_cover_all_local_all_premium_and_tiered_shapes() -> None:
    methods = [FusionMethod.ZSCORE, FusionMethod.RRF]
    policies = {p.name: p for p in what_if_policies(_inputs(), [0.3], methods)}
    assert set(policies) == {"all-local", "all-premium", "coverage @30%, zscore", "exclusive @30%, zscore",
                             "coverage @30%, rrf", "exclusive @30%, rrf"}
    cov, exc = policies["coverage @30%, zscore"], policies["exclusive @30%, zscore"]
    assert cov.holds["local"].all() and cov.holds["premium"].sum() == 30 and cov.cost_usd == 30.0
    assert not np.any(exc.holds["local"] & exc.holds["premium"])
    assert policies["all-premium"].cost_usd == 100.0
