"""PlanBudget: a global combine that decides which documents may use the paid tier.

Documents that want the API tier (by rule or score) become plan items keyed by value per
estimated dollar; the exact, bounded ``tiering.budget.PlanAccumulator`` admits the best
ones while the estimated spend fits the budget left for this run. The resulting
``BudgetPlan`` (one cutoff key) reaches ``RouteByTier`` as a singleton side input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam

from tiering.budget import BudgetPlan, PlanAccumulator, PlanItem, priority_key
from tiering.documents import ScoredDocument
from tiering.routing import RoutingPolicy, api_version_for, wants_api

__all__ = ["PlanBudget", "estimated_api_cost"]


def estimated_api_cost(
    scored: ScoredDocument, policy: RoutingPolicy, price_per_token: dict[str, float]
) -> float:
    version = api_version_for(scored.document.id, policy)
    if version is None or version in scored.paid:  # paid earlier: the result cache holds it
        return 0.0
    return scored.est_tokens * price_per_token[version]


@beam.typehints.with_input_types(PlanItem)
@beam.typehints.with_output_types(BudgetPlan)
class _PlanCombineFn(beam.CombineFn):  # type: ignore[misc]
    def __init__(self, budget_usd: float | None) -> None:
        self._budget = budget_usd

    def create_accumulator(self) -> PlanAccumulator:
        return PlanAccumulator(self._budget)

    def add_input(self, acc: PlanAccumulator, item: PlanItem) -> PlanAccumulator:
        acc.add(item)
        return acc

    def merge_accumulators(self, accs: Iterable[PlanAccumulator]) -> PlanAccumulator:
        accs = list(accs)
        return accs[0].merge(accs[1:])

    def extract_output(self, acc: PlanAccumulator) -> BudgetPlan:
        return acc.plan()


@beam.typehints.with_input_types(ScoredDocument)
@beam.typehints.with_output_types(PlanItem)
class _PlanItemsFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, policy: RoutingPolicy, price_per_token: dict[str, float]) -> None:
        self._policy = policy
        self._prices = price_per_token

    def process(self, scored: ScoredDocument) -> Iterator[PlanItem]:
        version = api_version_for(scored.document.id, self._policy)
        if version is not None and wants_api(scored.document, scored.score, self._policy):
            # unchanged documents are already embedded by this version and cost nothing
            if version not in scored.unchanged:
                cost = estimated_api_cost(scored, self._policy, self._prices)
                yield PlanItem(priority_key(scored.document.id, scored.score, cost), cost)


class PlanBudget(beam.PTransform):  # type: ignore[misc]
    """Scored documents -> a one-element PCollection holding the BudgetPlan."""

    def __init__(
        self,
        policy: RoutingPolicy,
        price_per_token: dict[str, float],
        budget_usd: float | None,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.prices = price_per_token
        self.budget_usd = budget_usd

    def expand(self, scored: beam.PCollection[ScoredDocument]) -> beam.PCollection[BudgetPlan]:
        return (
            scored
            | "PlanItems" >> beam.ParDo(_PlanItemsFn(self.policy, self.prices))
            | "Plan" >> beam.CombineGlobally(_PlanCombineFn(self.budget_usd))
        )
