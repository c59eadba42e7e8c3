"""Budget planning: which documents may use the paid tier so the estimate fits the budget.

Each document eligible for the API tier has a priority key ``(value per dollar, tie)``; the
plan admits documents in descending key order while the cumulative estimated cost fits the
budget left for this run, and is summarised as one cutoff key, so it travels to the routing
step as a tiny side input whatever the corpus size. The accumulator is exact and bounded:
it drops items that can never be admitted (those after the budget is already used up by
higher-priority items), so partial plans from many workers merge correctly.

After a run, :class:`BudgetStatus` says where the spend stands against the per-run and
monthly limits: :meth:`BudgetStatus.alerts` decides the ``warning`` / ``exceeded`` budget
events and :meth:`BudgetStatus.gauges` gives the numbers for the budget gauges.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from tiering.ab import stable_unit

__all__ = [
    "PriorityKey",
    "PlanItem",
    "BudgetPlan",
    "priority_key",
    "PlanAccumulator",
    "budget_left",
    "BudgetLevel",
    "BudgetAlert",
    "BudgetStatus",
    "budget_level",
]

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


# ----------------------------------------------------------------- budget alerts


class BudgetLevel(StrEnum):
    """How close a spend is to its limit (the Prefect event names use these values)."""

    OK = "ok"
    WARNING = "warning"
    EXCEEDED = "exceeded"


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """One limit (``scope`` ``"run"`` or ``"month"``) and where the spend stands against it.

    ``documents_over_budget`` counts documents that wanted the paid tier but went to the
    local tier because this limit was the binding one: the budget was exhausted for them.
    """

    scope: str
    level: BudgetLevel
    spend_usd: float
    limit_usd: float
    warn_fraction: float
    documents_over_budget: int = 0
    over_budget_went: str = "embedded locally instead"  # a backfill's: deferred to its next run

    @property
    def fraction(self) -> float | None:
        """Spend / limit; None for a zero limit."""
        return self.spend_usd / self.limit_usd if self.limit_usd > 0 else None

    @property
    def left_usd(self) -> float:
        return max(0.0, self.limit_usd - self.spend_usd)

    @property
    def event(self) -> str:
        """The Prefect event name: ``tierembed.budget.exceeded`` or ``.warning``."""
        return f"tierembed.budget.{self.level.value}"

    def message(self) -> str:
        what = "this run's budget" if self.scope == "run" else "the monthly budget"
        share = "" if self.fraction is None else f" ({self.fraction:.0%})"
        text = f"{what}: spent ${self.spend_usd:,.6f} of ${self.limit_usd:,.6f}{share}"
        if self.documents_over_budget:
            text += (
                f"; {self.documents_over_budget} documents that wanted the paid tier were "
                f"{self.over_budget_went}"
            )
        if self.level is BudgetLevel.EXCEEDED:
            return text + (
                "; exhausted: raise budget.per_run_usd or budget.monthly_usd to pay for more"
            )
        if self.level is BudgetLevel.WARNING:
            return text + f"; past the warning share {self.warn_fraction:.0%}"
        return text


def budget_level(
    spend_usd: float, limit_usd: float | None, warn_fraction: float, documents_over_budget: int = 0
) -> BudgetLevel:
    """EXCEEDED when the limit is used up (spend at or over a positive limit, over a zero
    one) or turned documents away from the paid tier; WARNING past ``warn_fraction``."""
    if limit_usd is None:
        return BudgetLevel.OK
    if documents_over_budget > 0 or spend_usd > limit_usd or (limit_usd > 0 and spend_usd >= limit_usd):
        return BudgetLevel.EXCEEDED
    if limit_usd > 0 and spend_usd >= warn_fraction * limit_usd:
        return BudgetLevel.WARNING
    return BudgetLevel.OK


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """Where a finished run leaves the budget; the numbers the budget gauges export.

    ``run_limit_usd`` is the budget the run was planned with (the tighter of the per-run
    cap and what the month had left); ``month_to_date_usd`` is the month's spend after
    the run, this run included.
    """

    month: str
    run_spend_usd: float
    run_est_usd: float
    run_limit_usd: float | None
    per_run_cap_usd: float | None
    month_to_date_usd: float
    monthly_limit_usd: float | None
    warn_fraction: float
    documents_over_budget: int = 0
    over_budget_went: str = "embedded locally instead"

    @property
    def run_left_usd(self) -> float | None:
        return None if self.run_limit_usd is None else max(0.0, self.run_limit_usd - self.run_spend_usd)

    @property
    def month_left_usd(self) -> float | None:
        if self.monthly_limit_usd is None:
            return None
        return max(0.0, self.monthly_limit_usd - self.month_to_date_usd)

    def _month_binds(self) -> bool:
        # The month was the binding limit when it, not the per-run cap, set the run budget.
        if self.monthly_limit_usd is None:
            return False
        return self.per_run_cap_usd is None or (
            self.run_limit_usd is not None and self.run_limit_usd < self.per_run_cap_usd
        )

    def alerts(self) -> tuple[BudgetAlert, ...]:
        """The limits at WARNING or EXCEEDED, run first."""
        out: list[BudgetAlert] = []
        month_binds = self._month_binds()
        if self.run_limit_usd is not None and not month_binds:
            demoted = self.documents_over_budget
            level = budget_level(self.run_spend_usd, self.run_limit_usd, self.warn_fraction, demoted)
            out.append(BudgetAlert("run", level, self.run_spend_usd, self.run_limit_usd,
                                   self.warn_fraction, demoted, self.over_budget_went))
        if self.monthly_limit_usd is not None:
            demoted = self.documents_over_budget if month_binds else 0
            level = budget_level(self.month_to_date_usd, self.monthly_limit_usd, self.warn_fraction, demoted)
            out.append(BudgetAlert("month", level, self.month_to_date_usd, self.monthly_limit_usd,
                                   self.warn_fraction, demoted, self.over_budget_went))
        return tuple(a for a in out if a.level is not BudgetLevel.OK)

    def documents_moved(self) -> dict[str, int]:
        """Documents moved away from the paid tier, by the limit that moved them (``run``
        or ``month``; the other is 0): what the ``tierembed.budget.moved`` gauge exports."""
        moved = {"run": 0, "month": 0}
        if self.documents_over_budget:
            binding = "month" if self._month_binds() else "run"
            if binding == "run" and self.run_limit_usd is None:
                binding = "month"
            moved[binding] = self.documents_over_budget
        return moved

    def gauges(self) -> dict[str, float]:
        """Current values for the budget gauges (absent limits are left out)."""
        values = {
            "run_spend_usd": self.run_spend_usd,
            "run_est_usd": self.run_est_usd,
            "month_to_date_usd": self.month_to_date_usd,
            "documents_over_budget": float(self.documents_over_budget),
        }
        optional = {
            "run_limit_usd": self.run_limit_usd,
            "run_left_usd": self.run_left_usd,
            "monthly_limit_usd": self.monthly_limit_usd,
            "month_left_usd": self.month_left_usd,
        }
        values.update({k: v for k, v in optional.items() if v is not None})
        return values
