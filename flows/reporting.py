"""Presenting a run report: a text summary for the terminal and a Prefect table artifact."""

from __future__ import annotations

import logging

from tiering.outcome import RunStatus
from tiering.report import RunReport

__all__ = ["render_text", "publish_report", "report_rows"]

_log = logging.getLogger(__name__)


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.6f}"


def report_rows(report: RunReport) -> list[dict[str, object]]:
    """One row per (tier, model version): the table of the Prefect artifact."""
    rows: list[dict[str, object]] = []
    for line in report.lines:
        rows.append({
            "tier": line.tier,
            "model_version": line.model_version,
            "model": line.model_name,
            "documents": line.documents,
            "chunked": line.chunked_documents,
            "est_tokens": line.est_tokens,
            "billed_tokens": line.billed_tokens,
            "est_cost_usd": round(line.est_cost_usd, 8),
            "cost_usd": round(line.cost_usd, 8),
            "fell_back": line.fell_back,
        })
    stages = dict(report.dead_letters_by_stage)
    rows.append({"tier": "dead letters", "model_version": "", "model": ", ".join(
        f"{k}: {v}" for k, v in stages.items()) or "none", "documents": report.dead_letters,
        "chunked": "", "est_tokens": "", "billed_tokens": "", "est_cost_usd": "", "cost_usd": "",
        "fell_back": ""})
    return rows


def _plan_line(report: RunReport) -> str:
    wanted, planned = report.api_documents_wanted, report.api_documents_planned
    budget = "no budget limit" if report.budget_usd is None else f"budget {_usd(report.budget_usd)}"
    return (f"  plan: {wanted} documents wanted the paid tier; {planned} admitted "
            f"(estimated {_usd(report.est_cost_usd)}; {budget}), "
            f"{report.over_budget} moved to the local tier by the budget"
            + (f", {report.fell_back_budget} more by the spend guard at run time"
               if report.fell_back_budget else ""))


def _budget_line(report: RunReport) -> str:
    if report.budget_usd is None:
        run = "no limit for this run"
    else:
        run = f"this run {_usd(report.budget_usd)}, left {_usd(report.run_left_usd)}"
    if report.monthly_limit_usd is None:
        month = f"month to date {_usd(report.month_to_date_after_usd)} (no monthly limit)"
    else:
        month = (f"month to date {_usd(report.month_to_date_after_usd)} of "
                 f"{_usd(report.monthly_limit_usd)}, left {_usd(report.month_left_usd)}")
    return f"  budget: {run}; {month}"


def render_text(report: RunReport) -> str:
    """The run report for the terminal: the plan, one line per (tier, model version),
    billed and estimated cost, the budget left, dead letters and the accounting check."""
    lines = [
        f"run {report.run_id}  source={report.source}  ({report.duration_s:.1f}s)",
        f"  endpoint: {report.endpoint}",
        f"  read {report.records_read} records: {report.documents_valid} valid documents, "
        f"{dict(report.dead_letters_by_stage).get('validate', 0)} rejected by validation; "
        f"{report.skipped_unchanged} skipped as unchanged"
        + (f"; {report.backfill_deferred} deferred by the backfill budget to the next backfill run"
           if report.backfill_deferred else ""),
        _plan_line(report),
        f"  {'tier':<6} {'version':<20} {'docs':>6} {'chunked':>7} {'est tok':>9} "
        f"{'billed tok':>10} {'est cost':>12} {'cost':>12}",
    ]
    for t in report.lines:
        lines.append(
            f"  {t.tier:<6} {t.model_version:<20} {t.documents:>6} {t.chunked_documents:>7} "
            f"{t.est_tokens:>9} {t.billed_tokens:>10} {_usd(t.est_cost_usd):>12} {_usd(t.cost_usd):>12}"
            + (f"  ({t.fell_back} fell back to local)" if t.fell_back else "")
            + (f"  ({t.unmetered_tokens} tokens had no usage in the reply: charged at the estimate)"
               if t.unmetered_tokens else "")
            + (f"  (~{t.timed_out_tokens} tokens in requests that timed out: the provider may have "
               "billed them too, unseen; raise api.timeout_s)" if t.timed_out_tokens else "")
        )
    lines.append(f"  total billed cost {_usd(report.cost_usd)} (estimated {_usd(report.est_cost_usd)})")
    lines.append(_budget_line(report))
    if report.api_requests:
        reqs = ", ".join(f"{k}: {v}" for k, v in report.api_requests)
        lines.append(f"  API requests by status: {reqs}; retries: {report.api_retries}"
                     + (f"; split for size: {report.api_size_splits}" if report.api_size_splits else ""))
    if report.api_breaker:
        moves = ", ".join(f"{k}: {v}" for k, v in report.api_breaker)
        lines.append(f"  API circuit breaker: {moves}")
    if report.api_cached:
        lines.append(f"  API result cache: {report.api_cached} documents' vectors were paid for by an "
                     "earlier run and not paid again")
    stages = ", ".join(f"{k}: {v}" for k, v in report.dead_letters_by_stage) or "none"
    lines.append(f"  dead letters: {report.dead_letters} ({stages}) -> {report.dead_letter_path}")
    lines.append(f"  written to the store: {report.written}; accounting "
                 + ("OK (every record embedded, skipped or dead-lettered)" if report.accounting_ok()
                    else "MISMATCH: some records are unaccounted for"))
    lines.extend(f"  note: {n}" for n in report.notes)
    lines.append(_status_line(report))
    return "\n".join(lines)


def _status_line(report: RunReport) -> str:
    """How the run ended and the exit code that says so (tiering.outcome)."""
    status = RunStatus(report.status)
    head = f"  status: {status.value.replace('_', ' ')} (exit code {status.exit_code})"
    return "\n    - ".join([head, *report.status_reasons])


def publish_report(report: RunReport) -> None:
    """Create the run-report table artifact when running inside a Prefect flow run."""
    from prefect.artifacts import create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    create_table_artifact(
        key="tierembed-run-report",
        table=report_rows(report),
        description=f"tierembed run `{report.run_id}`\n\n```\n{render_text(report)}\n```",
    )
