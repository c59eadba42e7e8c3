"""Presenting a run report: a text summary for the terminal and a Prefect table artifact."""

from __future__ import annotations

import logging

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


def render_text(report: RunReport) -> str:
    lines = [
        f"run {report.run_id}  source={report.source}  ({report.duration_s:.1f}s)",
        f"  endpoint: {report.endpoint}",
        f"  read {report.records_read} records: {report.documents_valid} valid documents, "
        f"{dict(report.dead_letters_by_stage).get('validate', 0)} rejected by validation, "
        f"{report.skipped_unchanged} skipped as unchanged",
        f"  {'tier':<6} {'version':<16} {'docs':>6} {'chunked':>7} {'est tok':>9} "
        f"{'billed tok':>10} {'est cost':>12} {'cost':>12}",
    ]
    for l in report.lines:
        lines.append(
            f"  {l.tier:<6} {l.model_version:<16} {l.documents:>6} {l.chunked_documents:>7} "
            f"{l.est_tokens:>9} {l.billed_tokens:>10} {_usd(l.est_cost_usd):>12} {_usd(l.cost_usd):>12}"
            + (f"  ({l.fell_back} fell back to local)" if l.fell_back else "")
        )
    lines.append(f"  total billed cost {_usd(report.cost_usd)} (estimated {_usd(report.est_cost_usd)});"
                 f" budget for this run {_usd(report.budget_usd)}; "
                 f"{report.over_budget} documents moved to local by the budget")
    if report.api_requests:
        reqs = ", ".join(f"{k}: {v}" for k, v in report.api_requests)
        lines.append(f"  API requests by status: {reqs}; retries: {report.api_retries}")
    stages = ", ".join(f"{k}: {v}" for k, v in report.dead_letters_by_stage) or "none"
    lines.append(f"  dead letters: {report.dead_letters} ({stages}) -> {report.dead_letter_path}")
    lines.append(f"  written to the store: {report.written}; accounting "
                 + ("OK (every record embedded, skipped or dead-lettered)" if report.accounting_ok()
                    else "MISMATCH: some records are unaccounted for"))
    lines.extend(f"  note: {n}" for n in report.notes)
    return "\n".join(lines)


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
