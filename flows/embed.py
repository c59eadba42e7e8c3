"""The ``embed-documents`` Prefect flow: one run of the tiered embedding pipeline.

Thin by design: load settings, work out the budget left, resolve the API endpoint (starting
the local stand-in server when there is none), run the Beam pipeline, then publish the run
report as a Prefect artifact and return it. Deployments point at
``flows.embed:embed_documents``.

No ``from __future__ import annotations`` here: Prefect builds the parameter schema of a
served flow from real annotations.
"""

import logging
import signal
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Optional

# Prefect before anything that imports Beam: Beam's import-time warning otherwise takes
# over the root logger.
import prefect
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from beam_pipeline.pipeline import PipelineOutcome, PipelineSpec, api_prices, run_pipeline
from beam_pipeline.read import match_input
from flows.budget_events import Emit, settle_budget
from flows.endpoint import (
    ApiTierUnavailable,
    api_never_worked,
    preflight,
    resolve_endpoint,
    settings_for_endpoint,
)
from flows.reporting import publish_report
from flows.secrets import resolve_api_key
from flows.signals import RunStopped, record_stop_signals, stop_signal_of
from flows.telemetry_flow import RunTelemetry
from store.ledger import Reservation, SpendLedger
from store.registry import open_registry
from tiering.errors import InputNotFoundError
from tiering.outcome import OutcomePolicy, RunStatus, run_outcome
from tiering.report import RunReport, build_report
from tiering.settings import TierembedSettings, load_settings

__all__ = ["embed_documents", "run_embedding", "new_run_id", "RunIncomplete", "flow_state"]

_ = prefect  # imported for its side effect on logging order
_log = logging.getLogger(__name__)


def new_run_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def _run_or_stop(spec: PipelineSpec) -> PipelineOutcome:
    """Run the pipeline; a stop signal comes out as :class:`RunStopped`, whatever Beam or
    Prefect turned it into on the way (see flows.signals)."""
    try:
        return run_pipeline(spec)
    except BaseException as exc:
        signum = stop_signal_of(exc)
        if signum is None:
            raise
        raise RunStopped(f"stopped by {signal.Signals(signum).name}", signum) from None


@task(name="run-beam-pipeline", cache_policy=NO_CACHE, retries=0)
def _run_pipeline_task(spec: PipelineSpec) -> PipelineOutcome:
    # retries=0: the API tier has its own single retry layer; retrying the whole pipeline
    # would re-send paid requests.
    return _run_or_stop(spec)


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
    backfill: Optional[str] = None,
) -> RunReport:
    """Run the pipeline once and build its report (used by the flow and by tests).

    Budget: the spend ledger (``budget.ledger_path``, or ``ledger``) reserves this run's
    budget, the tighter of the per-run cap and what the month has left
    (``month_to_date_usd`` overrides the ledger's month-to-date, a what-if); the plan
    inside the pipeline fits that budget. Afterwards the billed spend is recorded, budget
    events are emitted (``emit`` defaults to Prefect's ``emit_event``) and alerts are noted
    in the report.

    Model versions: live weights and shadow samples come from the version registry
    (``tierembed models``), brought up to date with the settings first. ``backfill`` embeds
    every document with that one version (see ``flows.backfill``).
    """
    run_id = run_id or new_run_id()
    settings = settings_for_endpoint(settings)  # the stand-in gets versions of its own
    per_run = budget_usd if budget_usd is not None else settings.budget.per_run_usd
    ledger = ledger or SpendLedger(settings.budget.ledger_path,
                                   stale_after_s=settings.budget.stale_run_after_s)
    started = time.monotonic()
    _, versions = open_registry(settings, by=f"run {run_id}")
    with resolve_endpoint(settings.api) as api:
        grant = ledger.begin_run(run_id, per_run_usd=per_run, monthly_usd=settings.budget.monthly_usd,
                                 source=source, month_to_date_usd=month_to_date_usd)
        # skip-unchanged is a join inside the pipeline (the store's rows are read there)
        spec = PipelineSpec(settings, source, run_id, grant.budget_usd, api, full_refresh=full_refresh,
                            registry=versions, backfill=backfill)
        telemetry = RunTelemetry(settings, run_id)
        telemetry.begin(grant, api.provider, source)  # budget gauges, progress artifact
        # Inside a flow run the pipeline is a visible task; elsewhere (tests, scripts) a call.
        runner = _run_pipeline_task if FlowRunContext.get() else _run_or_stop
        try:
            with ledger.heartbeat_while(run_id, settings.budget.heartbeat_s), record_stop_signals():
                probed = _preflight(settings, api, grant.budget_usd)
                outcome = runner(spec)
        except BaseException as exc:
            # A missing input fails while the graph is built, a dead endpoint in the
            # preflight: both before any paid call. A run stopped by SIGINT/SIGTERM recorded
            # each reply's spend: it is settled at that.
            signum = stop_signal_of(exc)
            if signum is None:
                why = f"{type(exc).__name__}: {exc}"
            else:
                why = f"stopped by a signal ({signal.Signals(signum).name}); settled at the spend it recorded"
            ledger.fail_run(run_id, why,
                            nothing_sent=isinstance(exc, InputNotFoundError | ApiTierUnavailable),
                            settle=signum is not None)
            telemetry.failed(exc)
            if signum is not None:
                raise RunStopped(f"stopped by {signal.Signals(signum).name}", signum) from None
            raise
    prices = api_prices(settings)
    report = build_report(
        run_id=run_id,
        source=source,
        counters=_with_probes(outcome.counters, probed, settings),
        local_models={m.version: m.model for m in settings.local.models},
        api_models={m.version: (m.model, prices[m.version]) for m in settings.api.models},
        dead_letter_path=outcome.dead_letter_prefix + "*.jsonl",
        budget_usd=grant.budget_usd,
        month_to_date_usd=grant.month_to_date_usd,
        monthly_limit_usd=settings.budget.monthly_usd,
        duration_s=time.monotonic() - started,
        endpoint=f"{api.provider} {api.base_url or 'https://api.openai.com/v1'}",
    )
    skipped = match_input(source, settings.input.format).skipped_note()
    if skipped:
        _log.warning("%s", skipped)
    notes = [*_ledger_notes(grant, per_run, settings.budget.monthly_usd), *filter(None, [skipped])]
    report = replace(report, notes=(*report.notes, *notes))
    report, status = settle_budget(report, ledger, settings.budget, per_run_cap_usd=per_run,
                                   month=grant.month, emit=emit)
    dl = settings.dead_letters
    ending = run_outcome(report, OutcomePolicy(dl.max_failed_fraction, dl.max_invalid_fraction))
    report = replace(report, status=ending.status.value, status_reasons=ending.reasons)
    never = api_never_worked(report)
    if never is not None:  # a run that never reached its API fails, whatever else it did
        report = replace(report, status=RunStatus.FAILED.value, status_reasons=(never, *ending.reasons))
    telemetry.finished(report, status)  # month-to-date gauges from the ledger; flush
    return report


def _preflight(settings: TierembedSettings, api: Any, budget_usd: Optional[float]) -> dict[str, int]:
    """Check the API endpoint before the pipeline (flows.endpoint.preflight); skipped when
    the run may not spend anything; prunes the result cache of old entries too."""
    cache = settings.api.result_cache
    if cache.path:
        from store.result_cache import ResultCache

        ResultCache(cache.path).prune(cache.ttl_days * 86_400)
    if not settings.api.preflight or budget_usd == 0:
        return {}
    return preflight(api, settings.api)


def _with_probes(counters: dict[str, int], probed: dict[str, int],
                 settings: TierembedSettings) -> dict[str, int]:
    """The run's counters plus the tokens a preflight probe was billed (first version of
    each model), so the report and the ledger show every paid token."""
    if not probed:
        return counters
    out = dict(counters)
    for model, tokens in probed.items():
        version = next(m.version for m in settings.api.models if m.model == model)
        key = f"billed_tokens.api.{version}"
        out[key] = out.get(key, 0) + tokens
    return out


def _ledger_notes(grant: Reservation, per_run: Optional[float], monthly: Optional[float]) -> list[str]:
    """Dead runs settled before this one, and - when the month's budget left this run less
    than its per-run cap - the runs holding the rest, with what to do about them."""
    notes = grant.notes()
    short = (monthly is not None and grant.budget_usd is not None
             and (per_run is None or grant.budget_usd < per_run))
    if short and grant.held_by:
        held = sum(h.held_usd for h in grant.held_by)
        notes.append(f"this run got ${grant.budget_usd:,.6f} of the monthly budget because other runs hold "
                     f"${held:,.6f} of it: " + "; ".join(h.message() for h in grant.held_by[:5]))
    return notes


class RunIncomplete(Exception):  # noqa: N818 - a state's payload more than an error
    """The result of a flow run that ended partial or failed (see ``tiering.outcome``):
    the summary, with the whole run report (``report``) riding along."""

    def __init__(self, summary: str, report: dict[str, Any]) -> None:
        super().__init__(summary, report)
        self.summary = summary
        self.report = report

    def __str__(self) -> str:
        return self.summary


def flow_state(report: RunReport) -> Any:
    """What the flow returns: its report, in a state that tells Prefect how the run ended.

    ``completed``: the report (a plain Completed state); ``completed_with_warnings``: a
    Completed state named CompletedWithWarnings; ``partial`` / ``failed``: a Failed state
    (named Partial for the first) whose result is a :class:`RunIncomplete` with the report.
    """
    from prefect.states import Completed, Failed

    status = RunStatus(report.status)
    data = report.to_dict()
    summary = f"tierembed run {report.run_id}: " + "; ".join((status.value, *report.status_reasons))
    if status is RunStatus.COMPLETED:
        return data
    if status is RunStatus.COMPLETED_WITH_WARNINGS:
        return Completed(name="CompletedWithWarnings", message=summary[:2000], data=data)
    name = "Partial" if status is RunStatus.PARTIAL else "Failed"
    return Failed(name=name, message=summary[:2000], data=RunIncomplete(summary, data))


@flow(name="embed-documents", log_prints=True)
def embed_documents(
    source: str,
    config_path: Optional[str] = None,
    budget_usd: Optional[float] = None,
    dry_run: bool = False,
    full_refresh: bool = False,
    settings_overrides: Optional[dict[str, Any]] = None,
    run_id: Optional[str] = None,
) -> Any:
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
        run_id: The run's id (new if not given); the CLI passes one to follow its progress.

    Fails (the flow run ends Failed) when the API tier cannot work: the endpoint is
    unreachable, refuses the key or does not know a model (checked before the pipeline),
    or every API request of the run failed (checked after it, once the report is published).

    Returns:
        The run report (a dict). A run whose documents were dead-lettered by the embedding
        or store stages beyond ``dead_letters.max_failed_fraction`` ends in a Failed state
        named ``Partial`` whose result is a ``RunIncomplete`` carrying the report; one with
        only bad input records in a Completed state named ``CompletedWithWarnings``
        (see ``flow_state`` and ``tiering.outcome``).
    """
    logger = get_run_logger()
    settings = load_settings(config_path, overrides=settings_overrides)
    settings = resolve_api_key(settings)  # api.api_key_secret_block -> api.api_key
    if dry_run:
        from beam_pipeline.read import match_sources

        files = match_sources(source, settings.input.format)
        logger.info("dry run: settings valid; %d input file(s) match %r", len(files), source)
        return {"dry_run": True, "files": files}
    report = run_embedding(settings, source, budget_usd=budget_usd, full_refresh=full_refresh,
                           run_id=run_id)
    publish_report(report)
    return flow_state(report)
