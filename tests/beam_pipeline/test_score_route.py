"""ScoreDocuments and RouteByTier as Beam stages: scores, tags per branch, SkipUnchanged."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.plan import PlanBudget
from beam_pipeline.route import RouteByTier
from beam_pipeline.score import ScoreDocuments
from beam_pipeline.skip_unchanged import SkipUnchanged
from store.stored_hashes import StoredHash
from tiering.classifier import load_default
from tiering.documents import Document, Tier
from tiering.routing import RoutingPolicy, Rule

POLICY = RoutingPolicy(
    mode="exclusive", api_threshold=1.0,
    rules=(Rule("priority", "high", Tier.API),),
    local_versions=(("loc-a", 1.0),), api_versions=(("api-a", 0.5), ("api-b", 0.5)),
)
PRICES = {"api-a": 1e-6, "api-b": 1e-6}


def doc(i: int, priority: str = "normal") -> Document:
    return Document(f"d{i}", f"document number {i} about yields", "s:1",
                    json.dumps({"priority": priority}), f"h{i}")


def test_score_matches_the_classifier() -> None:
    docs = [doc(1), doc(2, "high")]
    clf = load_default()
    with TestPipeline() as p:
        scored = p | beam.Create(docs) | ScoreDocuments()
        out = scored | beam.Map(lambda s: (s.document.id, round(s.score, 9)))
        assert_that(out, equal_to([(d.id, round(clf.score(d), 9)) for d in docs]))


def test_route_tags_branches_and_skips_unchanged_targets() -> None:
    docs = [doc(i, "high" if i < 6 else "normal") for i in range(10)]
    stored = [StoredHash("d9", "loc-a", "h9"), StoredHash("d8", "loc-a", "stale"),
              StoredHash("gone", "loc-a", "h-gone")]  # no longer in the input: dropped by the join
    with TestPipeline() as p:
        rows = p | "Stored" >> beam.Create(stored)
        scored = p | beam.Create(docs) | ScoreDocuments() | SkipUnchanged(rows)
        plan = scored | PlanBudget(POLICY, PRICES, None)
        routed = scored | RouteByTier(POLICY, PRICES, plan)
        assert set(routed) == {"local/loc-a", "api/api-a", "api/api-b"}
        api = (routed["api/api-a"], routed["api/api-b"]) | beam.Flatten() | beam.Map(lambda r: r.id)
        assert_that(api, equal_to([f"d{i}" for i in range(6)]), label="api")
        local = routed["local/loc-a"] | beam.Map(lambda r: (r.id, r.tier.value, r.model_version))
        assert_that(local, equal_to([("d6", "local", "loc-a"), ("d7", "local", "loc-a"),
                                     ("d8", "local", "loc-a")]), label="local: d9 unchanged")


def test_zero_budget_routes_everything_local() -> None:
    docs = [doc(i, "high") for i in range(4)]
    with TestPipeline() as p:
        scored = p | beam.Create(docs) | ScoreDocuments()
        plan = scored | PlanBudget(POLICY, PRICES, 0.0)
        routed = scored | RouteByTier(POLICY, PRICES, plan)
        assert_that(routed["local/loc-a"] | beam.Map(lambda r: (r.id, "over budget" in r.reason)),
                    equal_to([(f"d{i}", True) for i in range(4)]))


def test_unchanged_api_document_stays_put_when_the_budget_is_spent() -> None:
    # d0 and d1 are already embedded by their API version with the same text: keeping them
    # costs nothing, so a zero budget must neither re-embed them locally nor count them.
    docs = [doc(i, "high") for i in range(3)]
    from tiering.ab import assign_version

    versions = {d.id: assign_version(d.id, POLICY.api_versions, salt="ab-api") for d in docs}
    stored = [StoredHash(d.id, versions[d.id], d.hash) for d in docs[:2]]
    # the same text stored under the OTHER api version does not make d2 free
    other = "api-a" if versions["d2"] == "api-b" else "api-b"
    stored.append(StoredHash("d2", other, docs[2].hash))
    with TestPipeline() as p:
        rows = p | "Stored" >> beam.Create(stored)
        scored = p | beam.Create(docs) | ScoreDocuments() | SkipUnchanged(rows)
        plan = scored | PlanBudget(POLICY, PRICES, 0.0)
        routed = scored | RouteByTier(POLICY, PRICES, plan)
        everything = tuple(routed.values()) | beam.Flatten() | beam.Map(lambda r: (r.id, r.tier.value))
        assert_that(everything, equal_to([("d2", "local")]))
