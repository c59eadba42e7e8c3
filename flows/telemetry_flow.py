"""Flow-side telemetry of one run: set-up, budget gauges, skipped documents, progress.

``run_embedding`` drives a :class:`RunTelemetry` through a run::

    telemetry = RunTelemetry(settings, run_id)
    telemetry.begin(grant, api.provider, source)   # after the ledger granted the budget
    telemetry.failed(exc)                          # when the pipeline raises
    telemetry.finished(report, status)             # after settle_budget

``begin`` sets this process's OpenTelemetry up (``beam_pipeline.telemetry``; the DoFns of
an in-process runner share it, other worker processes set up their own), seeds every series
at zero and exports, sets the budget gauges (limit, and month-to-date spend before the run)
and, inside a Prefect flow run, starts the progress artifact. ``finished`` records the
skipped documents (a figure only the whole run knows), sets the gauges to the month's
spend after the run from the spend ledger, puts the breaker gauges back to 0, completes
the artifact and flushes. The Prometheus alert ``TierembedBudgetExceeded`` fires from these
gauges, and the Prefect event ``tierembed.budget.exceeded`` is emitted by
``flows.budget_events`` from the same ``BudgetStatus``.
"""

from __future__ import annotations

import contextvars
import logging
import shutil
import threading
from collections.abc import Callable
from typing import cast
from uuid import UUID

from beam_pipeline.progress import RunProgress, count_records, read_progress
from beam_pipeline.telemetry import NO_TIER, Telemetry, get_telemetry, telemetry_context
from store.ledger import Reservation
from tiering.budget import BudgetStatus
from tiering.report import RunReport
from tiering.settings import TierembedSettings

__all__ = ["PROGRESS_KEY", "RunTelemetry", "ProgressArtifact"]

_log = logging.getLogger(__name__)
PROGRESS_KEY = "tierembed-progress"


class RunTelemetry:
    """Telemetry of one run, from the flow's process (see the module docstring)."""

    def __init__(self, settings: TierembedSettings, run_id: str) -> None:
        self._settings = settings
        self._run_id = run_id
        self._telemetry: Telemetry | None = None
        self._progress: ProgressArtifact | None = None
        self._progress_dir: str | None = None

    def begin(self, grant: Reservation, provider: str, source: str) -> None:
        ctx = telemetry_context(self._settings, self._run_id, provider)
        self._progress_dir = ctx.progress_dir
        tel = self._telemetry = get_telemetry(ctx, driver=True)
        tel.set_budget("month", limit_usd=self._settings.budget.monthly_usd,
                       spend_usd=grant.month_to_date_usd)
        tel.set_budget("run", limit_usd=grant.budget_usd, spend_usd=0.0)
        tel.flush()
        if _in_flow_run():
            self._progress = ProgressArtifact(self._run_id, ctx.progress_dir, source,
                                              self._settings.input.format)
            self._progress.start()

    def failed(self, exc: BaseException) -> None:
        if self._progress is not None:
            self._progress.stop(complete=False, note=f"failed: {type(exc).__name__}: {exc}"[:300])
        self._end()

    def finished(self, report: RunReport, status: BudgetStatus) -> None:
        tel = self._telemetry
        if tel is None:
            return
        if report.skipped_unchanged:
            tel.record_outcome("skipped", NO_TIER, NO_TIER, report.skipped_unchanged)
        moved = status.documents_moved()
        tel.set_budget("month", limit_usd=status.monthly_limit_usd, spend_usd=status.month_to_date_usd,
                       moved=moved["month"])
        tel.set_budget("run", limit_usd=status.run_limit_usd, spend_usd=status.run_spend_usd,
                       moved=moved["run"])
        if self._progress is not None:
            self._progress.stop(complete=True, note=(
                f"{report.written} written, {report.dead_letters} dead-lettered, "
                f"{report.skipped_unchanged} skipped unchanged; billed ${report.cost_usd:,.6f}"))
        self._end()

    def _end(self) -> None:
        if self._telemetry is not None:
            self._telemetry.end_run()
            self._telemetry.flush()
        if self._progress_dir:
            shutil.rmtree(self._progress_dir, ignore_errors=True)


def _in_flow_run() -> bool:
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def _create(progress: float, key: str, description: str) -> UUID:
    from prefect.artifacts import create_progress_artifact

    artifact_id = create_progress_artifact(progress=progress, key=key, description=description)
    return cast(UUID, artifact_id)  # sync call: async_dispatch returns the value itself


def _update(artifact_id: UUID, progress: float, description: str) -> None:
    from prefect.artifacts import update_progress_artifact

    update_progress_artifact(artifact_id, progress, description=description)


class ProgressArtifact:
    """A Prefect progress artifact (key ``tierembed-progress``) kept up to date by a thread.

    Progress is the (document, version) targets written or dead-lettered, read from the
    workers' progress files, over the input's record count; held below 100% until the run
    ends (unchanged documents that are skipped never reach the writer, and coverage mode
    writes two targets for some documents, so the ratio is an estimate).
    """

    def __init__(
        self,
        run_id: str,
        progress_dir: str,
        source: str,
        input_format: str = "auto",
        *,
        interval_s: float = 2.0,
        create: Callable[[float, str, str], UUID] = _create,
        update: Callable[[UUID, float, str], None] = _update,
        count: Callable[[str, str], int] = count_records,
    ) -> None:
        self._run_id = run_id
        self._dir = progress_dir
        self._source = source
        self._format = input_format
        self._interval_s = interval_s
        self._create, self._update, self._count = create, update, count
        self._id: UUID | None = None
        self._total: int | None = None
        self._percent = 0.0
        self._described = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._id = self._create(0.0, PROGRESS_KEY, f"run {self._run_id}: starting")
        except Exception as exc:  # noqa: BLE001 - progress is a convenience: never fail a run
            _log.warning("run %s: no progress artifact: %s", self._run_id, exc)
            return
        # The copied context carries Prefect's settings and run context into the thread.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop,),
                                        name="tierembed-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            self._total = self._count(self._source, self._format)
        except Exception as exc:  # noqa: BLE001 - without a total the artifact shows counts only
            _log.info("run %s: cannot count input records for progress: %s", self._run_id, exc)
        while not self._stop.wait(self._interval_s):
            self.poll()

    def poll(self) -> float:
        """Read the progress files and update the artifact if anything moved. Documents
        count as done once written or dead-lettered, or once the API tier has their vectors
        (its replies are reported as they arrive; writers may flush only at the end)."""
        progress = read_progress(self._dir)
        percent = self._percent
        if self._total:
            done = max(progress.done, progress.api_documents)
            percent = max(self._percent, min(99.0, 100.0 * done / self._total))
        description = self._describe(progress)
        if percent != self._percent or description != self._described:
            self._send(percent, description)
            self._described = description
        return percent

    def _describe(self, p: RunProgress) -> str:
        of = f" of about {self._total} input records" if self._total else ""
        api = ""
        if p.api_requests:
            api = (f"; API tier: {p.api_documents} documents, {p.api_tokens} tokens billed "
                   f"(${p.api_cost_usd:,.6f}), {p.api_requests} requests, {p.api_429} answered "
                   f"429, {p.api_wait_s:,.1f}s waited for rate limits")
        return (f"run {self._run_id}: {p.written} written, {p.dead_lettered} dead-lettered"
                f"{of} ({p.fell_back} fell back to the local tier){api}")

    def _send(self, percent: float, description: str) -> None:
        if self._id is None:
            return
        try:
            self._update(self._id, percent, description)
            self._percent = percent
        except Exception as exc:  # noqa: BLE001 - progress is a convenience: never fail a run
            _log.warning("run %s: progress artifact not updated: %s", self._run_id, exc)

    def stop(self, *, complete: bool, note: str) -> None:
        """Stop polling; set 100% when the run completed, else keep the last figure."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._send(100.0 if complete else self._percent, f"run {self._run_id}: {note}")
