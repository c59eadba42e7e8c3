"""Fast unit tests of tiering.routing: rules, threshold, budget plan, modes, A/B versions."""

from __future__ import annotations

import json
import math

from tiering.budget import BudgetPlan, PlanAccumulator, PlanItem, priority_key
from tiering.documents import Document, Tier
from tiering.routing import RoutingPolicy, Rule, decide_route, wanted_tier


def _doc(doc_id: str = "d1", **metadata: object) -> Document:
    return Document(doc_id, "some text", "test:1", json.dumps(metadata))


def _policy(mode: str = "exclusive", threshold: float = 0.5, rules: tuple[Rule, ...] = (),
            api: tuple[tuple[str, float], ...] = (("te3", 1.0),)) -> RoutingPolicy:
    return RoutingPolicy(mode, threshold, rules, (("minilm", 1.0),), api)


ADMIT_ALL = BudgetPlan.unlimited()
ADMIT_NONE = BudgetPlan(0.0, (math.inf, math.inf), 0, 5, 0.0)


def test_score_at_threshold_goes_to_api_and_below_goes_local() -> None:
    policy = _policy(threshold=0.5)
    assert wanted_tier(_doc(), 0.5, policy)[0] is Tier.API
    assert wanted_tier(_doc(), 0.49, policy)[0] is Tier.LOCAL
    decision = decide_route(_doc(), 0.9, (9.0, 0.5), policy, ADMIT_ALL)
    assert decision.targets == ((Tier.API, "te3"),) and decision.wanted_api and not decision.over_budget


def test_route_over_budget_sends_to_local_tier() -> None:
    decision = decide_route(_doc(), 0.99, (99.0, 0.5), _policy(), ADMIT_NONE)
    assert decision.targets == ((Tier.LOCAL, "minilm"),)
    assert decision.wanted_api and decision.over_budget and "over budget" in decision.reason


def test_rule_forces_a_tier_whatever_the_score() -> None:
    rules = (Rule("priority", "high", Tier.API), Rule("kind", "chat", Tier.LOCAL))
    policy = _policy(rules=rules)
    forced_api = decide_route(_doc(priority="high"), 0.01, (0.1, 0.5), policy, ADMIT_ALL)
    assert forced_api.targets == ((Tier.API, "te3"),) and "rule priority='high'" in forced_api.reason
    forced_local = decide_route(_doc(kind="chat"), 0.99, (9.9, 0.5), policy, ADMIT_ALL)
    assert forced_local.targets == ((Tier.LOCAL, "minilm"),) and not forced_local.wanted_api


def test_rule_forced_api_still_obeys_the_budget() -> None:
    policy = _policy(rules=(Rule("priority", "high", Tier.API),))
    decision = decide_route(_doc(priority="high"), 0.0, (0.0, 0.5), policy, ADMIT_NONE)
    assert decision.targets == ((Tier.LOCAL, "minilm"),) and decision.over_budget


def test_rule_matches_value_and_type_exactly() -> None:
    rule = Rule("tier_flag", True, Tier.API)
    assert rule.matches({"tier_flag": True})
    assert not rule.matches({"tier_flag": "true"}) and not rule.matches({})


def test_coverage_mode_gives_valuable_documents_both_vectors() -> None:
    policy = _policy(mode="coverage")
    both = decide_route(_doc(), 0.9, (9.0, 0.5), policy, ADMIT_ALL)
    assert both.targets == ((Tier.LOCAL, "minilm"), (Tier.API, "te3"))
    cheap = decide_route(_doc(), 0.1, (1.0, 0.5), policy, ADMIT_ALL)
    assert cheap.targets == ((Tier.LOCAL, "minilm"),)
    over = decide_route(_doc(), 0.9, (9.0, 0.5), policy, ADMIT_NONE)
    assert over.targets == ((Tier.LOCAL, "minilm"),) and over.over_budget


def test_plan_cutoff_splits_documents_by_priority() -> None:
    policy = _policy(threshold=0.0)
    docs = [(f"d{i}", i / 10) for i in range(10)]
    acc = PlanAccumulator(0.35)  # three documents at $0.10 fit, a fourth does not
    for doc_id, score in docs:
        acc.add(PlanItem(priority_key(doc_id, score, 0.1), 0.1))
    plan = acc.plan()
    api = [doc_id for doc_id, score in docs
           if decide_route(_doc(doc_id), score, priority_key(doc_id, score, 0.1), policy, plan).targets[0][0]
           is Tier.API]
    assert api == ["d7", "d8", "d9"]


def test_api_version_follows_the_stable_ab_split() -> None:
    policy = _policy(threshold=0.0, api=(("te3-small", 0.5), ("te3-large", 0.5)))
    picks = {decide_route(_doc(f"d{i}"), 1.0, (1.0, 0.5), policy, ADMIT_ALL).targets[0][1]
             for i in range(200)}
    assert picks == {"te3-small", "te3-large"}
    again = decide_route(_doc("d42"), 1.0, (1.0, 0.5), policy, ADMIT_ALL)
    assert again == decide_route(_doc("d42"), 1.0, (1.0, 0.5), policy, ADMIT_ALL)


def test_with_a_budget_the_plan_decides_and_the_threshold_is_not_used() -> None:
    from dataclasses import replace

    policy = replace(_policy(mode="coverage", threshold=0.7), budget_decides=True)
    low = wanted_tier(_doc(), 0.05, policy)
    assert low[0] is Tier.API and "budget plan decides" in low[1]
    admitted = decide_route(_doc(), 0.05, (5.0, 0.5), policy, ADMIT_ALL)
    assert admitted.targets == ((Tier.LOCAL, "minilm"), (Tier.API, "te3"))
    refused = decide_route(_doc(), 0.95, (95.0, 0.5), policy, ADMIT_NONE)
    assert refused.targets == ((Tier.LOCAL, "minilm"),) and refused.over_budget
    # rules still come first
    ruled = replace(policy, rules=(Rule("pin", "local", Tier.LOCAL),))
    assert wanted_tier(_doc(pin="local"), 0.99, ruled)[0] is Tier.LOCAL
