"""``tierembed budget``: the spend ledger on the command line.

``tierembed budget status`` shows the month's spend per tier and model version, the limits
and what is left, reservations of running runs, failed runs still charged at their
reservation, and the latest runs. It first settles runs that died (their process is gone,
or on another host their heartbeat is stale) at the spend they recorded, and says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli_values import finite_usd
from store.ledger import HealedRun, MonthSpend, RunRecord, SpendLedger
from tiering.budget import budget_level
from tiering.errors import TierembedError
from tiering.settings import BudgetSettings

__all__ = ["budget_app", "render_status"]

budget_app = typer.Typer(
    name="budget",
    help="The spend ledger: month-to-date API spend per tier and model, and per run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def _usd(value: float | None) -> str:
    return "none" if value is None else f"${value:,.6f}"


def _month_lines(spend: MonthSpend, budget: BudgetSettings) -> list[str]:
    charged = spend.charged_usd
    limit = budget.monthly_usd
    level = budget_level(charged, limit, budget.warn_fraction)
    head = f"  month to date: {_usd(charged)} charged"
    if spend.unreconciled_usd:
        head += (f" (of which {_usd(spend.unreconciled_usd)} unreconciled: the reservations of "
                 f"{spend.failed} failed runs, an upper bound of their bill)")
    lines = [head]
    if spend.reserved_usd or spend.running:
        lines.append(f"  reserved by {spend.running} running (or abandoned) runs: {_usd(spend.reserved_usd)}")
    if limit is None:
        lines.append("  monthly limit: none (set budget.monthly_usd)")
    else:
        left = max(0.0, limit - spend.committed_usd)
        lines.append(f"  monthly limit: {_usd(limit)}; left for new runs: {_usd(left)}; status: {level.value}"
                     f" (warning at {budget.warn_fraction:.0%})")
    lines.append(f"  per-run cap: {_usd(budget.per_run_usd)}")
    return lines


def _model_lines(spend: MonthSpend) -> list[str]:
    if not spend.by_model:
        return ["  no spend recorded this month"]
    rows = [f"  {'tier':<6} {'version':<18} {'model':<26} {'runs':>5} {'docs':>7} "
            f"{'billed tok':>11} {'cost':>14}"]
    for m in spend.by_model:
        rows.append(f"  {m.tier:<6} {m.model_version:<18} {m.model[:26]:<26} {m.runs:>5} "
                    f"{m.documents:>7} {m.billed_tokens:>11} {_usd(m.cost_usd):>14}")
    return rows


def _run_lines(runs: list[RunRecord]) -> list[str]:
    if not runs:
        return []
    rows = ["  latest runs:", f"  {'run':<26} {'status':<10} {'budget':>14} {'estimated':>14} {'billed':>14}"]
    for r in runs:
        # a running run, or a failed one still charged at its reservation: an upper bound
        held = r.status == "running" or (r.status == "failed" and r.reserved_usd > 0)
        billed = f"<= {_usd(max(r.reserved_usd, r.cost_usd))}" if held else _usd(r.cost_usd)
        rows.append(f"  {r.run_id[:26]:<26} {r.status:<10} {_usd(r.budget_usd):>14} "
                    f"{_usd(r.est_cost_usd):>14} {billed:>14}" + _beat(r))
    return rows


def _beat(r: RunRecord) -> str:
    if r.status != "running" or not r.heartbeat_at:
        return ""
    return f"  (pid {r.pid}, last heartbeat {r.heartbeat_at[:19]}Z)"


def _healed_lines(healed: list[HealedRun]) -> list[str]:
    return [f"  settled now: {h.message()}" for h in healed]


def render_status(ledger: SpendLedger, budget: BudgetSettings, month: str, runs: list[RunRecord],
                  healed: list[HealedRun] | None = None) -> str:
    spend = ledger.month_spend(month)
    head = f"spend ledger {ledger.path} - month {month} (UTC)"
    return "\n".join([head, *_healed_lines(healed or []), *_month_lines(spend, budget), *_model_lines(spend),
                      *_run_lines(runs)])


def _status_dict(
    ledger: SpendLedger, budget: BudgetSettings, month: str, runs: list[RunRecord],
    healed: list[HealedRun],
) -> dict[str, object]:
    spend = ledger.month_spend(month)
    return {
        "settled_now": [asdict(h) | {"message": h.message()} for h in healed],
        "ledger": str(ledger.path),
        "month": month,
        "billed_usd": spend.billed_usd,
        "unreconciled_usd": spend.unreconciled_usd,
        "reserved_usd": spend.reserved_usd,
        "charged_usd": spend.charged_usd,
        "committed_usd": spend.committed_usd,
        "monthly_limit_usd": budget.monthly_usd,
        "per_run_usd": budget.per_run_usd,
        "level": budget_level(spend.charged_usd, budget.monthly_usd, budget.warn_fraction).value,
        "by_model": [asdict(m) for m in spend.by_model],
        "runs": [asdict(r) for r in runs],
    }


@budget_app.command("status")
def status(
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="YAML settings file; budget.ledger_path names the ledger.",
        envvar="TIEREMBED_CONFIG")] = None,
    month: Annotated[Optional[str], typer.Option(
        help="Month to show, YYYY-MM (UTC); default: this month.")] = None,
    runs: Annotated[int, typer.Option("--runs", min=0, max=1000, help="How many latest runs to list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show month-to-date API spend per tier and model version, the limits, what is left,
    and the latest runs (read from the spend ledger, budget.ledger_path)."""
    from tiering.settings import load_settings

    if month is not None and not _MONTH_RE.match(month):
        typer.secho(f"error: --month must look like 2026-01, got {month!r}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    try:
        settings = load_settings(config)
        ledger = SpendLedger(settings.budget.ledger_path, stale_after_s=settings.budget.stale_run_after_s)
        healed = ledger.heal()  # runs that died: settled at the spend they recorded
        shown = month or ledger.current_month()
        latest = ledger.runs(month=shown, limit=runs) if runs else []
    except TierembedError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    if as_json:
        typer.echo(json.dumps(_status_dict(ledger, settings.budget, shown, latest, healed), indent=2))
        return
    typer.echo(render_status(ledger, settings.budget, shown, latest, healed))


@budget_app.command("reconcile")
def reconcile(
    run_id: Annotated[str, typer.Argument(help="The run id (see `tierembed budget status`).")],
    billed_usd: Annotated[float, typer.Option(
        "--billed-usd", callback=finite_usd,
        help="What the provider billed for that run (0 releases it).")],
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="YAML settings file; budget.ledger_path names the ledger.",
        envvar="TIEREMBED_CONFIG")] = None,
) -> None:
    """Settle a run that failed or was killed: its whole reservation counts against the
    month until its real bill is recorded here."""
    from tiering.settings import load_settings

    try:
        ledger = SpendLedger(load_settings(config).budget.ledger_path)
        record = ledger.reconcile_run(run_id, billed_usd)
    except TierembedError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"run {record.run_id}: {record.status}, billed ${billed_usd:,.6f}; "
               f"month to date ${ledger.month_to_date(record.month):,.6f}")


@budget_app.command("resume")
def resume(
    deployment: Annotated[str, typer.Argument(
        help="The deployment to resume, as <flow>/<deployment> (e.g. embed-documents/nightly-incremental).")],
) -> None:
    """Resume a deployment that the budget automation paused (deployments/automations),
    once the monthly budget is raised or the month has turned. Uses PREFECT_API_URL."""
    from prefect.exceptions import ObjectNotFound

    from flows.budget_events import resume_deployment

    try:
        deployment_id, was_paused = resume_deployment(deployment)
    except ObjectNotFound:
        typer.secho(f"error: no deployment {deployment!r} on this Prefect server; `prefect deployment ls` "
                    "lists them (<flow>/<deployment>)", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    state = "resumed" if was_paused else "was not paused; left running"
    typer.echo(f"deployment {deployment} ({deployment_id}): {state}")
