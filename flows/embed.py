"""The ``embed-documents`` Prefect flow: one run of the tiered embedding pipeline.

Thin by design: load settings, work out the budget left, resolve the API endpoint (starting
the local stand-in server when there is none), run the Beam pipeline, then publish the run
report as a Prefect artifact and return it. Deployments point at
``flows.embed:embed_documents``.

No ``from __future__ import annotations`` here: Prefect builds the parameter schema of a
served flow from real annotations.
"""

import time
import uuid
from datetime import UTC, datetime
from typing import Any, Optional

# Prefect before anything that imports Beam: Beam's import-time warning otherwise takes
# over the root logger.
import prefect
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from beam_pipeline.pipeline import PipelineOutcome, PipelineSpec, api_prices, run_pipeline
from flows.budget_events import Emit, settle_budget
from flows.endpoint import resolve_endpoint, settings_for_endpoint
from flows.reporting import publish_report
from flows.secrets import resolve_api_key
from flows.telemetry_flow import RunTelemetry
from store.ledger import SpendLedger
from tiering.errors import InputNotFoundError
from tiering.report import RunReport, build_report
from tiering.settings import TierembedSettings, load_settings

__all__ = ["embed_documents", "run_embedding", "new_run_id"]

_ = prefect  # imported for its side effect on logging order


def new_run_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


@task(name="run-beam-pipeline", cache_policy=NO_CACHE, retries=0)
def _run_pipeline_task(spec: PipelineSpec) -> PipelineOutcome:
    # retries=0: the API tier has its own single retry layer; retrying the whole pipeline
    # would re-send paid requests.
    return run_pipeline(spec)


def run_embedding(
    settings: TierembedSettings,
    source: str,
    *,
    budget_usd: Optional[float] = None,
    run_id: Optional[str] = None,
    month_to_date_usd: Optional[float] = None,
    full_refresh: bool = False,
    ledger: Optional[SpendLedger] = None,
    emit: Optional[Emit] = None,
) -> RunReport:
    """Run the pipeline once and build its report (used by the flow and by tests).

    Budget: the spend ledger (``budget.ledger_path``, or ``ledger``) reserves this run's
    budget, the tighter of the per-run cap and what the month has left
    (``month_to_date_usd`` overrides the ledger's month-to-date, a what-if); the plan
    inside the pipeline fits that budget. Afterwards the billed spend is recorded, budget
    events are emitted (``emit`` defaults to Prefect's ``emit_event``) and alerts are noted
    in the report.
    """
    run_id = run_id or new_run_id()
    settings = settings_for_endpoint(settings)  # the stand-in gets versions of its own
    per_run = budget_usd if budget_usd is not None else settings.budget.per_run_usd
    ledger = ledger or SpendLedger(settings.budget.ledger_path)
    started = time.monotonic()
    with resolve_endpoint(settings.api) as api:
        grant = ledger.begin_run(run_id, per_run_usd=per_run, monthly_usd=settings.budget.monthly_usd,
                                 source=source, month_to_date_usd=month_to_date_usd)
        # skip-unchanged is a join inside the pipeline (the store's rows are read there)
        spec = PipelineSpec(settings, source, run_id, grant.budget_usd, api, full_refresh)
        telemetry = RunTelemetry(settings, run_id)
        telemetry.begin(grant, api.provider, source)  # budget gauges, progress artifact
        # Inside a flow run the pipeline is a visible task; elsewhere (tests, scripts) a call.
        runner = _run_pipeline_task if FlowRunContext.get() else run_pipeline
        try:
            outcome = runner(spec)
        except BaseException as exc:
            # A missing input fails while the graph is built, before any paid call.
            ledger.fail_run(run_id, f"{type(exc).__name__}: {exc}",
                            nothing_sent=isinstance(exc, InputNotFoundError))
            telemetry.failed(exc)
            raise
    prices = api_prices(settings)
    report = build_report(
        run_id=run_id,
        source=source,
        counters=outcome.counters,
        local_models={m.version: m.model for m in settings.local.models},
        api_models={m.version: (m.model, prices[m.version]) for m in settings.api.models},
        dead_letter_path=outcome.dead_letter_prefix + "*.jsonl",
        budget_usd=grant.budget_usd,
        month_to_date_usd=grant.month_to_date_usd,
        monthly_limit_usd=settings.budget.monthly_usd,
        duration_s=time.monotonic() - started,
        endpoint=f"{api.provider} {api.base_url or 'https://api.openai.com/v1'}",
    )
    report, status = settle_budget(report, ledger, settings.budget, per_run_cap_usd=per_run,
                                   month=grant.month, emit=emit)
    telemetry.finished(report, status)  # month-to-date gauges from the ledger; flush
    return report


@flow(name="embed-documents", log_prints=True)
def embed_documents(
    source: str,
    config_path: Optional[str] = None,
    budget_usd: Optional[float] = None,
    dry_run: bool = False,
    full_refresh: bool = False,
    settings_overrides: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Embed the documents at SOURCE with the cheapest tier that fits their value and the budget.

    Args:
        source: Path, directory, glob or Beam filesystem URL (gs://, s3://) of JSONL,
            Parquet or CSV documents.
        config_path: YAML settings file; environment variables TIEREMBED_* override it.
        budget_usd: Cap on API spend for this run (overrides budget.per_run_usd).
        dry_run: Validate the settings and the input, then stop before embedding.
        full_refresh: Re-embed every document even if unchanged.
        settings_overrides: Per-run overrides of any setting, shaped like the YAML file,
            e.g. {"routing": {"api_threshold": 0.7}, "budget": {"monthly_usd": 50}}.
    """
    logger = get_run_logger()
    settings = load_settings(config_path, overrides=settings_overrides)
    settings = resolve_api_key(settings)  # api.api_key_secret_block -> api.api_key
    if dry_run:
        from beam_pipeline.read import match_sources

        files = match_sources(source, settings.input.format)
        logger.info("dry run: settings valid; %d input file(s) match %r", len(files), source)
        return {"dry_run": True, "files": files}
    report = run_embedding(settings, source, budget_usd=budget_usd, full_refresh=full_refresh)
    publish_report(report)
    return report.to_dict()
