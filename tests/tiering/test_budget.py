"""Fast unit tests of tiering.budget: the plan, its merge, budget left, and budget alerts."""

from __future__ import annotations

import math
import random

import pytest

from tiering.budget import (
    BudgetLevel,
    BudgetPlan,
    BudgetStatus,
    PlanAccumulator,
    PlanItem,
    budget_left,
    budget_level,
    priority_key,
)


def _items(n: int, seed: int = 0) -> list[PlanItem]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cost = rng.uniform(0.001, 0.2)
        out.append(PlanItem(priority_key(f"doc-{i}", rng.random(), cost), cost))
    return out


def _plan(items: list[PlanItem], budget: float | None) -> BudgetPlan:
    acc = PlanAccumulator(budget)
    for item in items:
        acc.add(item)
    return acc.plan()


def _admitted(plan: BudgetPlan, items: list[PlanItem]) -> list[PlanItem]:
    return [i for i in items if plan.admits(i.key)]


@pytest.mark.parametrize("budget", [0.01, 0.3, 1.0, 2.5, 7.0])
def test_plan_admits_highest_priority_prefix_within_budget(budget: float) -> None:
    items = _items(60)
    plan = _plan(items, budget)
    admitted = _admitted(plan, items)
    spend = sum(i.est_cost_usd for i in admitted)
    assert spend <= budget
    assert len(admitted) == plan.admitted and math.isclose(spend, plan.est_cost_usd)
    # A prefix in priority order: every admitted item outranks every rejected one, and the
    # best rejected item would not have fit.
    rejected = [i for i in items if not plan.admits(i.key)]
    if admitted and rejected:
        assert min(i.key for i in admitted) > max(i.key for i in rejected)
    if rejected:
        best_rejected = max(rejected, key=lambda i: i.key)
        assert spend + best_rejected.est_cost_usd > budget


def test_plan_never_overspends_on_random_inputs() -> None:
    rng = random.Random(7)
    for trial in range(300):
        items = _items(rng.randint(0, 40), seed=trial)
        budget = rng.choice([0.0, rng.uniform(0, 1), rng.uniform(0, 5)])
        plan = _plan(items, budget)
        assert sum(i.est_cost_usd for i in _admitted(plan, items)) <= budget


def test_zero_budget_admits_nothing_and_no_limit_admits_everything() -> None:
    items = _items(20)
    assert _admitted(_plan(items, 0.0), items) == []
    unlimited = _plan(items, None)
    assert _admitted(unlimited, items) == items and unlimited.cutoff is None
    assert BudgetPlan.unlimited().admits((0.0, 0.0))


def test_budget_that_covers_everything_has_no_cutoff() -> None:
    items = _items(10)
    plan = _plan(items, sum(i.est_cost_usd for i in items) + 1)
    assert plan.cutoff is None and plan.admitted == plan.candidates == 10


def test_raising_the_budget_only_adds_documents() -> None:
    items = _items(50, seed=3)
    previous: set[tuple[float, float]] = set()
    for budget in (0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 100.0):
        now = {i.key for i in _admitted(_plan(items, budget), items)}
        assert previous <= now
        previous = now


def test_equal_cost_documents_are_admitted_by_score() -> None:
    scores = [random.Random(i).random() for i in range(30)]
    items = [PlanItem(priority_key(f"d{i}", s, 0.1), 0.1) for i, s in enumerate(scores)]
    plan = _plan(items, 0.75)
    admitted = sorted(s for s, i in zip(scores, items, strict=True) if plan.admits(i.key))
    assert admitted == sorted(scores)[-7:]


def test_value_per_dollar_prefers_cheap_documents_of_equal_score() -> None:
    cheap = priority_key("a", 0.8, 0.01)
    dear = priority_key("b", 0.8, 0.10)
    assert cheap > dear
    assert priority_key("free", 0.1, 0.0)[0] == math.inf


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_merged_partial_plans_equal_a_single_plan(parts: int) -> None:
    items = _items(200, seed=11)
    whole = _plan(items, 1.5)
    accs = [PlanAccumulator(1.5) for _ in range(parts)]
    for n, item in enumerate(items):
        accs[n % parts].add(item)
    merged = accs[0].merge(accs[1:]).plan()
    assert (merged.cutoff, merged.admitted, merged.candidates) == (
        whole.cutoff, whole.admitted, whole.candidates)
    assert math.isclose(merged.est_cost_usd, whole.est_cost_usd)


def test_accumulator_stays_bounded_under_a_budget() -> None:
    acc = PlanAccumulator(0.05)
    for item in _items(20_000, seed=5):
        acc.add(item)
    assert len(acc.items) <= 4097
    assert acc.plan().candidates == 20_000


def test_budget_left_is_the_tighter_limit() -> None:
    assert budget_left(None, None, 3.0) is None
    assert budget_left(2.0, None, 100.0) == 2.0
    assert budget_left(None, 10.0, 4.0) == 6.0
    assert budget_left(2.0, 10.0, 9.5) == 0.5
    assert budget_left(2.0, 10.0, 12.0) == 0.0


# ------------------------------------------------------------------------- alerts


@pytest.mark.parametrize(
    ("spend", "limit", "demoted", "level"),
    [
        (0.1, None, 5, BudgetLevel.OK),
        (0.5, 1.0, 0, BudgetLevel.OK),
        (0.8, 1.0, 0, BudgetLevel.WARNING),
        (0.95, 1.0, 0, BudgetLevel.WARNING),
        (1.0, 1.0, 0, BudgetLevel.EXCEEDED),
        (0.2, 1.0, 3, BudgetLevel.EXCEEDED),
        (0.0, 0.0, 0, BudgetLevel.OK),
        (0.0, 0.0, 4, BudgetLevel.EXCEEDED),
        (0.01, 0.0, 0, BudgetLevel.EXCEEDED),
    ],
)
def test_budget_level(spend: float, limit: float | None, demoted: int, level: BudgetLevel) -> None:
    assert budget_level(spend, limit, 0.8, demoted) is level


def _status(**kw: object) -> BudgetStatus:
    base: dict[str, object] = dict(
        month="2026-01", run_spend_usd=0.1, run_est_usd=0.12, run_limit_usd=1.0, per_run_cap_usd=1.0,
        month_to_date_usd=2.0, monthly_limit_usd=10.0, warn_fraction=0.8, documents_over_budget=0,
    )
    base.update(kw)
    return BudgetStatus(**base)  # type: ignore[arg-type]


def test_status_without_pressure_has_no_alerts() -> None:
    status = _status()
    assert status.alerts() == ()
    assert status.run_left_usd == pytest.approx(0.9) and status.month_left_usd == pytest.approx(8.0)


def test_documents_moved_by_the_run_cap_exceed_the_run_budget() -> None:
    alerts = _status(run_spend_usd=0.95, documents_over_budget=4).alerts()
    assert [(a.scope, a.level) for a in alerts] == [("run", BudgetLevel.EXCEEDED)]
    assert alerts[0].event == "tierembed.budget.exceeded"
    assert alerts[0].documents_over_budget == 4 and "4 documents" in alerts[0].message()


def test_month_that_set_the_run_budget_takes_the_blame() -> None:
    # The month had 0.5 left, below the per-run cap of 1.0: the month is the binding limit.
    status = _status(run_limit_usd=0.5, run_spend_usd=0.5, month_to_date_usd=10.0, documents_over_budget=2)
    alerts = status.alerts()
    assert [(a.scope, a.level) for a in alerts] == [("month", BudgetLevel.EXCEEDED)]
    assert alerts[0].spend_usd == 10.0 and alerts[0].limit_usd == 10.0
    assert alerts[0].documents_over_budget == 2


def test_month_past_warn_fraction_warns() -> None:
    alerts = _status(month_to_date_usd=8.5).alerts()
    assert [(a.scope, a.level, a.event) for a in alerts] == [
        ("month", BudgetLevel.WARNING, "tierembed.budget.warning")]
    assert alerts[0].fraction == pytest.approx(0.85) and alerts[0].left_usd == pytest.approx(1.5)


def test_gauges_expose_spend_and_limits() -> None:
    gauges = _status().gauges()
    assert gauges["month_to_date_usd"] == 2.0 and gauges["monthly_limit_usd"] == 10.0
    assert gauges["run_left_usd"] == pytest.approx(0.9)
    unlimited = _status(run_limit_usd=None, per_run_cap_usd=None, monthly_limit_usd=None).gauges()
    assert "monthly_limit_usd" not in unlimited and "run_limit_usd" not in unlimited
