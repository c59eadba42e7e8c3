"""RouteByTier: tier and model version per document, as one tagged output per branch.

The decision itself is the pure ``tiering.routing.decide_route``; this DoFn only feeds it the
budget plan (a side input) and tags the result with ``"<tier>/<version>"``.

Unchanged targets are dropped here: a target (document, model version) whose content hash
the store already holds for that version (``ScoredDocument.unchanged``, set by the
SkipUnchanged join in ``beam_pipeline.skip_unchanged``; empty on ``--full-refresh``) is not
embedded again, so unchanged documents cost nothing on re-runs; a document with no target
left is counted as ``skipped_unchanged``.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
from apache_beam import pvalue

from beam_pipeline.plan import estimated_api_cost
from beam_pipeline.tagged import TaggedOutputsTransform
from tiering.budget import BudgetPlan, priority_key
from tiering.documents import RoutedDocument, ScoredDocument, Tier
from tiering.routing import RoutingPolicy, decide_route

__all__ = ["RouteByTier", "branch_tag", "branch_tags"]


def branch_tag(tier: Tier, version: str) -> str:
    return f"{tier.value}/{version}"


def branch_tags(policy: RoutingPolicy) -> list[str]:
    return [branch_tag(Tier.LOCAL, v) for v, _ in policy.local_versions] + [
        branch_tag(Tier.API, v) for v, _ in policy.api_versions
    ]


@beam.typehints.with_input_types(ScoredDocument, plan=BudgetPlan)
class _RouteFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, policy: RoutingPolicy, price_per_token: dict[str, float]) -> None:
        self._policy = policy
        self._prices = price_per_token

    def process(self, scored: ScoredDocument, plan: BudgetPlan) -> Iterator[object]:
        doc = scored.document
        cost = estimated_api_cost(scored, self._policy, self._prices)
        key = priority_key(doc.id, scored.score, cost)
        unchanged = frozenset(scored.unchanged)
        decision = decide_route(doc, scored.score, key, self._policy, plan, unchanged)
        targets = [t for t in decision.targets if t[1] not in unchanged]
        # coverage mode: the local vector exists (or is being made), so an API target that
        # cannot be embedded must not fall back to a second local write
        has_local = any(tier is Tier.LOCAL for tier, _ in decision.targets)
        beam.metrics.Metrics.counter(
            "tierembed", "documents_routed" if targets else "skipped_unchanged").inc()
        if decision.over_budget:
            beam.metrics.Metrics.counter("tierembed", "routed_over_budget").inc()
        for tier, version in targets:
            beam.metrics.Metrics.counter("tierembed", f"routed.{tier.value}.{version}").inc()
            routed = RoutedDocument(scored, tier, version, decision.reason,
                                    has_local_target=has_local and tier is Tier.API)
            yield pvalue.TaggedOutput(branch_tag(tier, version), routed)


class RouteByTier(TaggedOutputsTransform):
    """Scored documents -> a dict of PCollections keyed by ``"<tier>/<version>"``."""

    def __init__(
        self,
        policy: RoutingPolicy,
        price_per_token: dict[str, float],
        plan: beam.PCollection[BudgetPlan],
    ) -> None:
        super().__init__()
        self.policy = policy
        self.prices = price_per_token
        self.plan = plan

    def expand(self, scored: beam.PCollection[ScoredDocument]) -> dict[str, beam.PCollection]:
        tags = branch_tags(self.policy)
        outputs = scored | "Route" >> beam.ParDo(
            _RouteFn(self.policy, self.prices),
            plan=pvalue.AsSingleton(self.plan),
        ).with_output_types(RoutedDocument, **{tag: RoutedDocument for tag in tags}).with_outputs(*tags)
        return {tag: outputs[tag] for tag in tags}
