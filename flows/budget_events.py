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
second on the open-source server; outside a Prefect backend the emit is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tiering.budget import BudgetAlert, BudgetStatus

__all__ = ["EVENT_PREFIX", "Emit", "budget_event", "emit_budget_events"]

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
    from prefect.events import emit_event

    return emit_event(**kwargs)


def emit_budget_events(
    status: BudgetStatus, *, run_id: str, emit: Emit | None = None
) -> tuple[BudgetAlert, ...]:
    """Emit one event per alert of ``status`` (``emit`` defaults to Prefect's
    ``emit_event``) and log it; return the alerts."""
    send = emit or _prefect_emit
    alerts = status.alerts()
    for alert in alerts:
        log = _log.error if alert.level.value == "exceeded" else _log.warning
        log("budget %s (%s): %s", alert.level.value, alert.scope, alert.message())
        send(**budget_event(alert, run_id=run_id, month=status.month))
    return alerts
