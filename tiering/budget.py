"""Budget planning: which documents may use the paid tier so the estimate fits the budget.

Each document eligible for the API tier has a priority key ``(value per dollar, tie)``; the
plan admits documents in descending key order while the cumulative estimated cost fits the
budget left for this run, and is summarised as one cutoff key, so it travels to the routing
step as a tiny side input whatever the corpus size. The accumulator is exact and bounded:
it drops items that can never be admitted (those after the budget is already used up by
higher-priority items), so partial plans from many workers merge correctly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from tiering.ab import stable_unit

__all__ = ["PriorityKey", "PlanItem", "BudgetPlan", "priority_key", "PlanAccumulator", "budget_left"]

PriorityKey = tuple[float, float]


@dataclass(frozen=True, slots=True)
class PlanItem:
    key: PriorityKey
    est_cost_usd: float


def priority_key(doc_id: str, score: float, est_cost_usd: float) -> PriorityKey:
    """Value per dollar, with a stable per-document tie-break."""
    per_dollar = score / est_cost_usd if est_cost_usd > 0 else math.inf
    return (per_dollar, stable_unit(doc_id, "budget-tie"))


@dataclass(frozen=True, slots=True)
class BudgetPlan:
    """The outcome of planning. ``cutoff`` None means every eligible document is admitted."""

    budget_usd: float | None
    cutoff: PriorityKey | None
    admitted: int
    candidates: int
    est_cost_usd: float

    def admits(self, key: PriorityKey) -> bool:
        if self.budget_usd is not None and self.budget_usd <= 0:
            return False
        return self.cutoff is None or key >= self.cutoff

    @staticmethod
    def unlimited() -> BudgetPlan:
        return BudgetPlan(None, None, 0, 0, 0.0)


class PlanAccumulator:
    """Mergeable exact accumulator for :class:`BudgetPlan` (a Beam CombineFn wraps it)."""

    def __init__(self, budget_usd: float | None) -> None:
        self.budget_usd = budget_usd
        self.items: list[PlanItem] = []
        self.candidates = 0

    def add(self, item: PlanItem) -> None:
        self.items.append(item)
        self.candidates += 1
        if len(self.items) > 4096:
            self._compact()

    def merge(self, others: Iterable[PlanAccumulator]) -> PlanAccumulator:
        for other in others:
            self.items.extend(other.items)
            self.candidates += other.candidates
        self._compact()
        return self

    def _compact(self) -> None:
        self.items.sort(key=lambda i: i.key, reverse=True)
        if self.budget_usd is None:
            return
        total = 0.0
        for n, item in enumerate(self.items):
            total += item.est_cost_usd
            if total > self.budget_usd:
                # Items after the first that does not fit can never be admitted.
                del self.items[n + 1 :]
                return

    def plan(self) -> BudgetPlan:
        self._compact()
        if self.budget_usd is None:
            cost = sum(i.est_cost_usd for i in self.items)
            return BudgetPlan(None, None, len(self.items), self.candidates, cost)
        total, admitted, cutoff = 0.0, 0, None
        for item in self.items:
            if total + item.est_cost_usd > self.budget_usd:
                break
            total += item.est_cost_usd
            admitted += 1
            cutoff = item.key
        if admitted == len(self.items) and admitted == self.candidates:
            cutoff = None if self.budget_usd > 0 else (math.inf, math.inf)
        elif cutoff is None:
            cutoff = (math.inf, math.inf)
        return BudgetPlan(self.budget_usd, cutoff, admitted, self.candidates, total)


def budget_left(
    per_run_usd: float | None, monthly_usd: float | None, month_to_date_usd: float
) -> float | None:
    """Budget available to this run: the tighter of the run cap and what the month has left."""
    limits = []
    if per_run_usd is not None:
        limits.append(per_run_usd)
    if monthly_usd is not None:
        limits.append(max(0.0, monthly_usd - month_to_date_usd))
    return min(limits) if limits else None
