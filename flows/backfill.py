"""The ``backfill-version`` Prefect flow: re-embed the corpus with one model version.

Use it to give a new version (a candidate, a shadow, or a version just promoted with weight)
vectors for the documents it does not have yet, before it serves them: every document of
``source`` is routed to ``version`` only (``RoutingPolicy.backfill``); documents that
version already holds with the same content hash are skipped, so a backfill killed at any
point and started again re-embeds nothing it finished. An API version's backfill spends at
most ``budget_usd`` over all the runs of the backfill (the campaign): each run gets what the
earlier ones left (their spend read from the ledger, recorded as replies arrived), and what
the budget does not admit is deferred to the next backfill run, never sent to another
version. Progress comes from the run's progress artifact like any run.

Deployment: ``backfill-version/backfill`` in ``deployments/prefect.yaml``::

    prefect deployment run backfill-version/backfill --param version=te3-large \\
        --param source='gs://bucket/docs/*.jsonl' --param budget_usd=20
"""

import logging
import re
from dataclasses import replace
from typing import Any, Optional

import prefect
from prefect import flow

from flows.embed import flow_state, new_run_id, run_embedding
from flows.endpoint import STANDIN_SUFFIX, settings_for_endpoint
from flows.reporting import publish_report
from flows.secrets import resolve_api_key
from store.ledger import SpendLedger
from tiering.errors import ConfigError
from tiering.report import RunReport
from tiering.settings import TierembedSettings, load_settings

__all__ = ["backfill_version", "run_backfill", "campaign_prefix"]

_ = prefect  # imported before Beam (see flows.embed)
_log = logging.getLogger(__name__)


def campaign_prefix(version: str) -> str:
    """Run ids of a version's backfill runs share this prefix (their spend adds up)."""
    return f"backfill-{re.sub(r'[^A-Za-z0-9_.-]', '_', version)}-"


def run_backfill(settings: TierembedSettings, version: str, source: str,
                 budget_usd: Optional[float] = None, *, run_id: Optional[str] = None) -> RunReport:
    """One backfill run (used by the flow, the CLI and tests); see the module docstring."""
    version = _as_run_version(settings, version)
    prefix = campaign_prefix(version)
    ledger = SpendLedger(settings.budget.ledger_path, stale_after_s=settings.budget.stale_run_after_s)
    ledger.heal()  # a killed earlier run counts at what it recorded, not at its whole reservation
    spent = ledger.spend_of_runs(prefix)
    left = None if budget_usd is None else max(0.0, budget_usd - spent)
    if budget_usd is not None:
        _log.info("backfill %s: budget $%.6f, spent by earlier runs $%.6f, left $%.6f",
                  version, budget_usd, spent, left)
    report = run_embedding(settings, source, budget_usd=left, run_id=run_id or prefix + new_run_id(),
                           ledger=ledger, backfill=version)
    note = (f"backfill {version}: campaign budget {'none' if budget_usd is None else f'${budget_usd:.6f}'}, "
            f"spent by earlier runs ${spent:.6f}; "
            + ("done" if report.backfill_deferred == 0
               else f"{report.backfill_deferred} documents deferred: run the backfill again to resume"))
    return replace(report, notes=(*report.notes, note))


def _as_run_version(settings: TierembedSettings, version: str) -> str:
    """The name runs use for ``version``: with the local stand-in, API versions carry the
    ``-standin`` suffix (``flows.endpoint.settings_for_endpoint``)."""
    used = settings_for_endpoint(settings)
    names = {m.version for m in (*used.local.models, *used.api.models)}
    if version in names:
        return version
    if version + STANDIN_SUFFIX in names:
        return version + STANDIN_SUFFIX
    raise ConfigError(f"cannot backfill {version!r}: no such version in local.models or api.models "
                      f"(versions: {', '.join(sorted(names))})")


@flow(name="backfill-version", log_prints=True)
def backfill_version(
    version: str,
    source: str,
    budget_usd: Optional[float] = None,
    config_path: Optional[str] = None,
    settings_overrides: Optional[dict[str, Any]] = None,
) -> Any:
    """Embed every document of SOURCE with VERSION, skipping what it already holds.

    Ends like ``embed-documents``: Failed when the API never worked or too many documents
    were dead-lettered (``flows.embed.flow_state``), Completed otherwise.

    Args:
        version: A model version declared in local.models or api.models (any state).
        source: Path, glob or Beam filesystem URL of the corpus.
        budget_usd: Total API spend allowed for this version's backfill, over all its runs
            (None: only the monthly budget and the per-run cap apply).
        config_path: YAML settings file.
        settings_overrides: Per-run overrides of any setting, shaped like the YAML file.
    """
    settings = resolve_api_key(load_settings(config_path, overrides=settings_overrides))
    report = run_backfill(settings, version, source, budget_usd)
    publish_report(report)
    return flow_state(report)
