"""Budget events: tell Prefect when a run's or the month's budget is exhausted or nearly so.

After each run the flow builds a :class:`tiering.budget.BudgetStatus` (the decision of
``warning`` / ``exceeded`` is pure logic there) and emits one Prefect event per limit at
WARNING or EXCEEDED:

- ``tierembed.budget.exceeded``: the limit is used up, or documents that wanted the paid
  tier were embedded locally because of it;
- ``tierembed.budget.warning``: spend passed ``budget.warn_fraction`` of the limit.

Resource: ``tierembed.budget.<scope>`` (``run`` or ``month``); related: the run. Payload:
``scope``, ``level``, ``spend_usd``, ``limit_usd``, ``left_usd``, ``fraction``,
``warn_fraction``, ``documents_over_budget``, ``run_id``, ``month``, ``message``. A
Prefect automation on these events (a webhook, a deployment trigger) reacts in under a
second on the open-source server. Outside a flow run and without ``PREFECT_API_URL`` the
events are only logged.

:func:`settle_budget` is the flow's after-run step: record the billed spend in the spend
ledger, decide and emit the events, and note each alert in the run report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from store.ledger import LedgerError, SpendLedger, SpendLine
from tiering.budget import BudgetAlert, BudgetLevel, BudgetStatus
from tiering.report import RunReport
from tiering.settings import BudgetSettings

__all__ = [
    "resume_deployment",
    "EVENT_PREFIX",
    "Emit",
    "budget_event",
    "budget_status",
    "emit_budget_events",
    "settle_budget",
]

_log = logging.getLogger(__name__)
EVENT_PREFIX = "tierembed.budget"
Emit = Callable[..., Any]


def budget_event(alert: BudgetAlert, *, run_id: str, month: str) -> dict[str, Any]:
    """The keyword arguments of ``prefect.events.emit_event`` for ``alert``."""
    return {
        "event": alert.event,
        "resource": {
            "prefect.resource.id": f"{EVENT_PREFIX}.{alert.scope}",
            "prefect.resource.name": f"tierembed {alert.scope} budget",
            "tierembed.budget.scope": alert.scope,
        },
        "related": [{"prefect.resource.id": f"tierembed.run.{run_id}", "prefect.resource.role": "run"}],
        "payload": {
            "scope": alert.scope,
            "level": alert.level.value,
            "spend_usd": alert.spend_usd,
            "limit_usd": alert.limit_usd,
            "left_usd": alert.left_usd,
            "fraction": alert.fraction,
            "warn_fraction": alert.warn_fraction,
            "documents_over_budget": alert.documents_over_budget,
            "run_id": run_id,
            "month": month,
            "message": alert.message(),
        },
    }


def _prefect_emit(**kwargs: Any) -> Any:
    """Prefect's ``emit_event`` inside a flow run or with a Prefect API configured.

    Elsewhere (a script or test calling the pipeline directly) nothing would receive the
    event, and Prefect would start a throwaway local server just to drop it: log only.
    """
    from prefect.context import FlowRunContext
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    if FlowRunContext.get() is None and not PREFECT_API_URL.value():
        return None
    return emit_event(**kwargs)


def emit_budget_events(
    status: BudgetStatus, *, run_id: str, emit: Emit | None = None
) -> tuple[BudgetAlert, ...]:
    """Emit one event per alert of ``status`` (``emit`` defaults to Prefect's
    ``emit_event``) and log it; return the alerts."""
    send = emit or _prefect_emit
    alerts = status.alerts()
    for alert in alerts:
        log = _log.error if alert.level is BudgetLevel.EXCEEDED else _log.warning
        log("budget %s (%s): %s", alert.level.value, alert.scope, alert.message())
        send(**budget_event(alert, run_id=run_id, month=status.month))
    return alerts


def _spend_lines(report: RunReport) -> list[SpendLine]:
    return [
        SpendLine(line.tier, line.model_version, line.model_name, line.documents, line.billed_tokens,
                  line.est_cost_usd, line.cost_usd)
        for line in report.lines
    ]


def budget_status(
    report: RunReport, budget: BudgetSettings, *, per_run_cap_usd: float | None, month: str,
    month_to_date_usd: float,
) -> BudgetStatus:
    """Where ``report``'s run leaves the budget (``month_to_date_usd``: after the run)."""
    return BudgetStatus(
        month=month,
        run_spend_usd=report.cost_usd,
        run_est_usd=report.est_cost_usd,
        run_limit_usd=report.budget_usd,
        per_run_cap_usd=per_run_cap_usd,
        month_to_date_usd=month_to_date_usd,
        monthly_limit_usd=budget.monthly_usd,
        warn_fraction=budget.warn_fraction,
        documents_over_budget=(report.backfill_deferred if report.backfill_deferred
                               else report.over_budget + report.fell_back_budget),
        over_budget_went=("deferred to the next backfill run" if report.backfill_deferred
                          else "embedded locally instead"),
    )


def settle_budget(
    report: RunReport,
    ledger: SpendLedger,
    budget: BudgetSettings,
    *,
    per_run_cap_usd: float | None,
    month: str,
    emit: Emit | None = None,
) -> tuple[RunReport, BudgetStatus]:
    """After a run: record its billed spend in the ledger (releasing its reservation),
    emit the budget events, and add a note per alert to the report."""
    notes = list(report.notes)
    try:
        ledger.finish_run(report.run_id, _spend_lines(report))
        month_to_date = ledger.month_to_date(month)
    except LedgerError as exc:
        # The run's reservation stays in the ledger, so the monthly cap still holds.
        _log.error("run %s: billed spend not recorded in the ledger: %s", report.run_id, exc)
        notes.append(f"billed spend NOT recorded in the ledger ({exc}); the run's reservation "
                     "stays charged to the month")
        month_to_date = (report.month_to_date_usd or 0.0) + report.cost_usd
    status = budget_status(report, budget, per_run_cap_usd=per_run_cap_usd, month=month,
                           month_to_date_usd=month_to_date)
    try:
        alerts = emit_budget_events(status, run_id=report.run_id, emit=emit)
    except Exception as exc:  # noqa: BLE001 - a lost alert must not fail a run already paid for
        _log.error("run %s: budget events not emitted: %s", report.run_id, exc)
        alerts = status.alerts()
    notes.extend(f"budget {a.level.value} ({a.scope}): {a.message()}" for a in alerts)
    return replace(report, notes=tuple(notes)), status


def resume_deployment(name: str) -> tuple[str, bool]:
    """Resume a deployment the budget automation paused (``<flow>/<deployment>``), through
    the Prefect API in ``PREFECT_API_URL``. Returns its id and whether it had been paused.

    Prefect 3.9 has no ``prefect deployment resume`` command (``prefect deployment schedule
    resume`` resumes schedules, not a paused deployment); this calls the client's own
    ``resume_deployment``."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        was_paused = bool(deployment.paused)
        client.resume_deployment(deployment.id)
    return str(deployment.id), was_paused
