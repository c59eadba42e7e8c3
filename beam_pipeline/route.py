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

from collections.abc import Iterable, Iterator

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


def branch_tags(policy: RoutingPolicy, declared: Iterable[tuple[Tier, str]] = ()) -> list[str]:
    """One tag per version a document can be routed to, plus ``declared`` (every configured
    version gets a branch, even one that receives nothing in this run)."""
    tags = [branch_tag(Tier.LOCAL, v) for v, _ in policy.local_versions]
    tags += [branch_tag(Tier.API, v) for v, _ in policy.api_versions]
    tags += [branch_tag(s.tier, s.version) for s in policy.shadows]
    if policy.backfill is not None:
        tags.append(branch_tag(*policy.backfill))
    tags += [branch_tag(t, v) for t, v in declared]
    return list(dict.fromkeys(tags))


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
        # A backfill never falls back either: the document keeps its live vectors, and a
        # local vector written in its place would land in a version nobody asked for.
        has_local = (self._policy.backfill is not None
                     or any(tier is Tier.LOCAL for tier, _ in decision.targets))
        outcome = ("backfill_deferred" if decision.deferred
                   else "documents_routed" if targets else "skipped_unchanged")
        beam.metrics.Metrics.counter("tierembed", outcome).inc()
        if decision.over_budget:
            beam.metrics.Metrics.counter("tierembed", "routed_over_budget").inc()
        for tier, version in targets:
            beam.metrics.Metrics.counter("tierembed", f"routed.{tier.value}.{version}").inc()
            routed = RoutedDocument(scored, tier, version, decision.reason,
                                    has_local_target=has_local and tier is Tier.API)
            yield pvalue.TaggedOutput(branch_tag(tier, version), routed)
        for tier, version in decision.shadow_targets:
            if version in unchanged:
                continue
            beam.metrics.Metrics.counter("tierembed", f"routed.{tier.value}.{version}").inc()
            beam.metrics.Metrics.counter("tierembed", f"shadow.{tier.value}.{version}").inc()
            # its live vector comes from the targets above: never fall back, never re-target
            shadowed = RoutedDocument(scored, tier, version, decision.reason + f"; shadow {version}",
                                      has_local_target=tier is Tier.API, shadow=True)
            yield pvalue.TaggedOutput(branch_tag(tier, version), shadowed)


class RouteByTier(TaggedOutputsTransform):
    """Scored documents -> a dict of PCollections keyed by ``"<tier>/<version>"``."""

    def __init__(
        self,
        policy: RoutingPolicy,
        price_per_token: dict[str, float],
        plan: beam.PCollection[BudgetPlan],
        declared: Iterable[tuple[Tier, str]] = (),
    ) -> None:
        super().__init__()
        self.policy = policy
        self.prices = price_per_token
        self.plan = plan
        self.declared = tuple(declared)

    def expand(self, scored: beam.PCollection[ScoredDocument]) -> dict[str, beam.PCollection]:
        tags = branch_tags(self.policy, self.declared)
        outputs = scored | "Route" >> beam.ParDo(
            _RouteFn(self.policy, self.prices),
            plan=pvalue.AsSingleton(self.plan),
        ).with_output_types(RoutedDocument, **{tag: RoutedDocument for tag in tags}).with_outputs(*tags)
        return {tag: outputs[tag] for tag in tags}
