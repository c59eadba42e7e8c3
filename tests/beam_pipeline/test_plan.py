"""PlanBudget and RouteByTier on Beam's TestPipeline: the global plan as a side input."""

from __future__ import annotations

import random

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.plan import PlanBudget, estimated_api_cost
from beam_pipeline.route import RouteByTier, branch_tag
from tiering.budget import PlanAccumulator, PlanItem, priority_key
from tiering.documents import Document, ScoredDocument, Tier
from tiering.routing import RoutingPolicy, Rule

PRICES = {"te3": 0.001}  # USD per token
POLICY = RoutingPolicy("exclusive", 0.5, (Rule("pin", "local", Tier.LOCAL),), (("minilm", 1.0),),
                       (("te3", 1.0),))


def _scored(n: int, seed: int = 0) -> list[ScoredDocument]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        meta = '{"pin": "local"}' if i % 10 == 0 else "{}"
        doc = Document(f"doc-{i:03d}", f"text {i}", "test", meta)
        docs.append(ScoredDocument(doc, rng.random(), rng.randint(20, 400)))
    return docs


def _expected_api_ids(docs: list[ScoredDocument], budget: float | None) -> list[str]:
    """The same plan, computed by the pure accumulator alone."""
    wanted = [d for d in docs
              if d.score >= POLICY.api_threshold and d.document.metadata_dict() != {"pin": "local"}]
    acc = PlanAccumulator(budget)
    keyed = []
    for d in wanted:
        cost = estimated_api_cost(d, POLICY, PRICES)
        key = priority_key(d.document.id, d.score, cost)
        acc.add(PlanItem(key, cost))
        keyed.append((d.document.id, key))
    plan = acc.plan()
    return sorted(doc_id for doc_id, key in keyed if plan.admits(key))


def _run(docs: list[ScoredDocument], budget: float | None) -> list[str]:
    """Run plan + routing; assert the API branch holds exactly the pure plan's documents."""
    expected = _expected_api_ids(docs, budget)
    all_ids = [d.document.id for d in docs]
    with TestPipeline() as p:
        scored = p | beam.Create(docs) | beam.Reshuffle()  # several bundles: partial plans merge
        plan = scored | PlanBudget(POLICY, PRICES, budget)
        routed = scored | RouteByTier(POLICY, PRICES, plan)
        api = routed[branch_tag(Tier.API, "te3")] | "ApiIds" >> beam.Map(lambda r: r.id)
        local = routed[branch_tag(Tier.LOCAL, "minilm")] | "LocalIds" >> beam.Map(lambda r: r.id)
        assert_that(api, equal_to(expected), label="ApiMatchesPurePlan")
        assert_that(local, equal_to(sorted(set(all_ids) - set(expected))), label="RestGoLocal")
        assert_that(plan | beam.Map(lambda x: x.admitted), equal_to([len(expected)]), label="OnePlan")
    return expected


@pytest.mark.parametrize("budget", [None, 0.0, 0.5, 3.0, 1000.0])
def test_routing_follows_the_global_plan(budget: float | None) -> None:
    docs = _scored(120)
    expected = _run(docs, budget)
    spend = sum(estimated_api_cost(d, POLICY, PRICES) for d in docs if d.document.id in expected)
    if budget is not None:
        assert spend <= budget
    if budget == 0.0:
        assert expected == []


def test_rule_pinned_documents_never_enter_the_plan() -> None:
    docs = _scored(40)
    pinned = {d.document.id for d in docs if d.document.metadata_dict() == {"pin": "local"}}
    expected = _run(docs, None)
    assert pinned and not pinned & set(expected)
