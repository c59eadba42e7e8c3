"""Cost counters and pipeline metrics through OpenTelemetry, set up once per process.

Every process of a run sets up its own ``MeterProvider`` from the ``TelemetrySettings``
slice it was handed (the flow from the settings tree, each Beam worker from the
:class:`TelemetryContext` pickled with its DoFns) and exports from there:

- ``otlp``: OTLP/HTTP push with cumulative temporality, every ``export_interval_s`` and at
  the end. The exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables (endpoint,
  headers, compression, certificates); ``otlp_endpoint`` overrides the endpoint. Each
  process is its own ``service.instance.id``: sum over it.
- ``pushgateway``: the same instruments through the SDK's Prometheus exporter (so
  ``embedding.cost`` in ``USD`` becomes ``embedding_cost_USD_total``, as through a
  Collector) into a private registry, PUT to a Pushgateway every ``export_interval_s`` and
  at the end. Grouping key: ``job`` for the flow's process; ``job`` + ``instance=<host>-<pid>``
  for other worker processes, which would otherwise overwrite one another.
- ``console``: stdout, for debugging; ``none`` (the default, and the tests'): no-op
  instruments, nothing exported.

With ``otlp`` and a ``pushgateway_url``, the flow's process also pushes the two budget
gauges (only those) to Pushgateway, which keeps the month-to-date spend between batch runs.

Flushing: the flow flushes at the end of a run and when it fails; every process shuts its
provider down at interpreter exit (``atexit``) and on SIGTERM (the handler flushes within
``export_timeout_s``, then hands the signal to the handler that was there before); sink
DoFns flush in ``teardown``.

Instruments (meter ``tierembed``), with their Prometheus names after the standard OTel
translation:

- ``embedding.cost`` (counter, USD): ``embedding_cost_USD_total{tier,model_version,provider}``
- ``tierembed.tokens`` (counter, {token}): ``tierembed_tokens_total{tier,model_version,kind}``
- ``tierembed.documents`` (counter): ``tierembed_documents_total{tier,model_version,outcome}``
- ``tierembed.budget.limit`` / ``.spend`` (gauges, USD): ``tierembed_budget_limit_USD{period}``,
  ``tierembed_budget_spend_USD{period}``, period ``month`` or ``run``; a limit of 0 = none
- ``tierembed.budget.moved_documents`` (gauge, {document}): ``tierembed_budget_moved_documents{period}``,
  documents that wanted the paid tier and were moved away from it (by the budget plan or
  the runtime spend guard) in the latest run because that period's budget ran out; 0 when
  none. The critical budget alerts fire on it: a budget that stopped spending
- ``tierembed.api.requests`` (counter): ``tierembed_api_requests_total{provider,model,status}``
- ``tierembed.api.retries`` (counter): ``tierembed_api_retries_total{provider,model}``
- ``tierembed.api.rate_limit.wait`` (counter, s):
  ``tierembed_api_rate_limit_wait_seconds_total{provider,model}``
- ``tierembed.api.breaker.state`` (gauge): ``tierembed_api_breaker_state{provider,model}``,
  0 closed, 1 half-open, 2 open
- ``gen_ai.client.token.usage`` (histogram, {token}): billed input tokens, one observation
  per embed call (``gen_ai.token.type=input``)
- ``gen_ai.client.operation.duration`` (histogram, s): one observation per request attempt

The GenAI histograms carry ``gen_ai.operation.name=embeddings``, ``gen_ai.provider.name``
and ``gen_ai.request.model`` and use the conventions' recommended bucket boundaries.

``kind`` is ``estimated`` (our token estimate of the documents embedded) or ``billed`` (the
provider's ``usage``, the figure cost is computed from). ``outcome``, one per (document,
model version) target, is ``embedded`` (written to the store by that tier), ``fell_back``
(re-targeted from the API tier to the local tier by the breaker or the run's spend cap,
then written by the local tier), ``dead_lettered``, or ``skipped`` (unchanged, counted by the
flow). Validation dead letters and skipped documents carry ``tier="none"``.

Every series of the run's model versions is seeded at zero and exported before the first
document is counted, so ``increase()`` in Prometheus sees the first spend.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import apache_beam as beam

from beam_pipeline.progress import ProgressRecorder, progress_recorder, run_progress_dir
from tiering.documents import DeadLetter, EmbeddedDocument
from tiering.settings import TelemetrySettings, TierembedSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader

    from beam_pipeline.api_embedder import ApiCallStats

__all__ = [
    "METER_NAME",
    "OUTCOMES",
    "NO_TIER",
    "TOKEN_BUCKETS",
    "DURATION_BUCKETS",
    "ModelSeries",
    "TelemetryContext",
    "Telemetry",
    "telemetry_context",
    "get_telemetry",
    "current_telemetry",
    "shutdown_telemetry",
    "SinkTelemetry",
    "RecordDeadLetters",
]

_log = logging.getLogger(__name__)

METER_NAME = "tierembed"
OUTCOMES = ("embedded", "skipped", "dead_lettered", "fell_back")
NO_TIER = "none"
# Bucket boundaries recommended by the GenAI semantic conventions (gen-ai-metrics.md).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)


@dataclass(frozen=True, slots=True)
class ModelSeries:
    """One model version of the run, with the labels its series carry."""

    tier: str
    version: str
    provider: str
    model: str

    def version_attrs(self) -> dict[str, str]:
        return {"tier": self.tier, "model_version": self.version}

    def api_attrs(self) -> dict[str, str]:
        return {"provider": self.provider, "model": self.model}

    def genai_attrs(self) -> dict[str, str]:
        return {"gen_ai.operation.name": "embeddings", "gen_ai.provider.name": self.provider,
                "gen_ai.request.model": self.model}


@dataclass(frozen=True, slots=True)
class TelemetryContext:
    """What DoFns get (pickled with them): the settings slice, the run and its series."""

    settings: TelemetrySettings
    run_id: str
    models: tuple[ModelSeries, ...]
    progress_dir: str


def telemetry_context(settings: TierembedSettings, run_id: str, api_provider: str) -> TelemetryContext:
    """The context of one run (built where the whole settings tree is at hand)."""
    models = tuple(ModelSeries("local", m.version, "local", m.model) for m in settings.local.models)
    models += tuple(ModelSeries("api", m.version, api_provider, m.model) for m in settings.api.models)
    return TelemetryContext(settings.telemetry, run_id, models,
                            run_progress_dir(settings.telemetry.progress_dir, run_id))


class _Instruments:
    def __init__(self, meter: Any) -> None:
        self.cost = meter.create_counter(
            "embedding.cost", unit="USD",
            description="Billed cost of embedding API calls: usage tokens times the model's price.")
        self.tokens = meter.create_counter(
            "tierembed.tokens", unit="{token}",
            description="Tokens of embedded documents: kind=estimated (our estimate) or billed (usage).")
        self.documents = meter.create_counter(
            "tierembed.documents", unit="{document}",
            description="Documents by outcome: embedded, skipped, dead_lettered, fell_back.")
        self.budget = _BudgetGauges(meter)
        self.requests = meter.create_counter(
            "tierembed.api.requests", unit="{request}",
            description="Embedding API request attempts by HTTP status (or timeout/connection).")
        self.retries = meter.create_counter(
            "tierembed.api.retries", unit="{retry}", description="Embedding API requests retried.")
        self.waits = meter.create_counter(
            "tierembed.api.rate_limit.wait", unit="s",
            description="Time spent waiting for rate-limit capacity before requests.")
        self.breaker = meter.create_gauge(
            "tierembed.api.breaker.state", unit="1",
            description="Circuit breaker of the API endpoint: 0 closed, 1 half-open, 2 open.")
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Billed input tokens per embed call (GenAI semantic conventions).",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="Duration of each embeddings request attempt (GenAI semantic conventions).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)


class _BudgetGauges:
    def __init__(self, meter: Any) -> None:
        self.limit = meter.create_gauge(
            "tierembed.budget.limit", unit="USD",
            description="Budget limit by period (month, run); 0 when no limit is set.")
        self.spend = meter.create_gauge(
            "tierembed.budget.spend", unit="USD",
            description="Billed spend by period: month to date (from the spend ledger), this run.")
        self.moved = meter.create_gauge(
            "tierembed.budget.moved_documents", unit="{document}",
            description="Documents the latest run moved away from the paid tier because this "
            "period's budget ran out (budget plan + runtime spend guard); 0 when none.")

    def set(self, period: str, limit_usd: float | None, spend_usd: float,
            moved: int | None = None) -> None:
        self.limit.set(float(limit_usd or 0.0), {"period": period})
        self.spend.set(float(spend_usd), {"period": period})
        if moved is not None:
            self.moved.set(int(moved), {"period": period})


class _Pusher:
    """PUTs one prometheus_client registry to a Pushgateway group, on demand and periodically."""

    def __init__(self, settings: TelemetrySettings, registry: Any, grouping_key: dict[str, str]) -> None:
        assert settings.pushgateway_url
        self.url = settings.pushgateway_url
        self.job = settings.job_name
        self.registry = registry
        self.grouping_key = grouping_key
        self._timeout_s = settings.export_timeout_s
        self._interval_s = settings.export_interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tierembed-pushgateway", daemon=True)
        self._thread.start()

    def push(self) -> bool:
        from prometheus_client import push_to_gateway

        with self._lock:  # one collection at a time: the exporter's collector is not reentrant
            try:
                push_to_gateway(self.url, job=self.job, registry=self.registry,
                                grouping_key=self.grouping_key, timeout=self._timeout_s)
            except OSError as exc:  # URLError/HTTPError included: metrics never fail a run
                _log.warning("push to Pushgateway %s (job %s) failed: %s; the next push retries",
                             self.url, self.job, exc)
                return False
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.push()

    def stop(self) -> None:
        self._stop.set()


_CUMULATIVE: dict[type, Any] | None = None


def _cumulative() -> dict[type, Any]:
    global _CUMULATIVE
    if _CUMULATIVE is None:
        from opentelemetry.sdk import metrics as m
        from opentelemetry.sdk.metrics.export import AggregationTemporality

        kinds = (m.Counter, m.UpDownCounter, m.Histogram, m.ObservableCounter,
                 m.ObservableUpDownCounter, m.ObservableGauge, m._Gauge)
        _CUMULATIVE = dict.fromkeys(kinds, AggregationTemporality.CUMULATIVE)
    return _CUMULATIVE


def _periodic(exporter: Any, settings: TelemetrySettings) -> MetricReader:
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    return PeriodicExportingMetricReader(exporter, export_interval_millis=settings.export_interval_s * 1000,
                                         export_timeout_millis=settings.export_timeout_s * 1000)


def _otlp_reader(settings: TelemetrySettings) -> MetricReader:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    endpoint = None
    if settings.otlp_endpoint:
        endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/metrics"
    # preferred_temporality overrides OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: a
    # batch job's deltas would be lost between its pushes; cumulative sums survive a lost push.
    exporter = OTLPMetricExporter(endpoint=endpoint, timeout=settings.export_timeout_s,
                                  preferred_temporality=_cumulative())
    return _periodic(exporter, settings)


def _prometheus_reader(settings: TelemetrySettings, worker: bool) -> tuple[MetricReader, _Pusher]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=True)
    # No scope labels and no target_info: the Pushgateway group (job, instance) identifies
    # the sender, and the series look like those the alert rules' unit tests use.
    reader = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=registry)
    grouping = {"instance": f"{socket.gethostname()}-{os.getpid()}"} if worker else {}
    return reader, _Pusher(settings, registry, grouping)


def _resource() -> Any:
    from opentelemetry.sdk.resources import Resource

    # Resource.create() reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return Resource.create({"service.instance.id": instance})


def _provider(readers: Sequence[MetricReader], job_name: str) -> MeterProvider:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

    resource = _resource()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": job_name}))
    return MeterProvider(metric_readers=list(readers), resource=resource)


class Telemetry:
    """This process's instruments and the exporters behind them (see the module docstring)."""

    def __init__(self, settings: TelemetrySettings, *, worker: bool,
                 extra_readers: Sequence[MetricReader] = ()) -> None:
        self.settings = settings
        self.worker = worker
        self.seeded_runs: set[str] = set()
        self._periodic: list[MetricReader] = []
        self._pushers: list[_Pusher] = []
        self._providers: list[MeterProvider] = []
        self._api_series: set[ModelSeries] = set()
        self._lock = threading.Lock()
        self.instruments = _Instruments(self._meter(self._readers(list(extra_readers))))
        self._budget_push: _BudgetGauges | None = self._budget_pushgateway()

    def _readers(self, readers: list[MetricReader]) -> list[MetricReader]:
        s = self.settings
        if s.exporter == "otlp":
            self._periodic.append(_otlp_reader(s))
        elif s.exporter == "console":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            self._periodic.append(_periodic(ConsoleMetricExporter(preferred_temporality=_cumulative()), s))
        elif s.exporter == "pushgateway":
            reader, pusher = _prometheus_reader(s, self.worker)
            readers.append(reader)
            self._pushers.append(pusher)
        return readers + self._periodic

    def _meter(self, readers: list[MetricReader]) -> Any:
        if not readers:
            from opentelemetry.metrics import NoOpMeter

            return NoOpMeter(METER_NAME)
        provider = _provider(readers, self.settings.job_name)
        self._providers.append(provider)
        return provider.get_meter(METER_NAME)

    def _budget_pushgateway(self) -> _BudgetGauges | None:
        s = self.settings
        if s.exporter != "otlp" or not s.pushgateway_url or self.worker:
            return None
        reader, pusher = _prometheus_reader(s, worker=False)
        self._pushers.append(pusher)
        provider = _provider([reader], s.job_name)
        self._providers.append(provider)
        return _BudgetGauges(provider.get_meter(METER_NAME))

    @property
    def enabled(self) -> bool:
        return bool(self._providers)

    # -- seeding -------------------------------------------------------------------------
    def mark_seeded(self, run_id: str) -> bool:
        """True the first time ``run_id`` is seen in this process."""
        with self._lock:
            if run_id in self.seeded_runs:
                return False
            self.seeded_runs.add(run_id)
            return True

    def seed(self, models: Iterable[ModelSeries]) -> None:
        """Create every series of ``models`` at zero (rate functions then see the first spend)."""
        ins = self.instruments
        for m in models:
            ins.cost.add(0, {**m.version_attrs(), "provider": m.provider})
            ins.tokens.add(0, {**m.version_attrs(), "kind": "estimated"})
            outcomes = ("embedded", "dead_lettered") + (("fell_back",) if m.tier == "local" else ())
            for outcome in outcomes:
                ins.documents.add(0, {**m.version_attrs(), "outcome": outcome})
            if m.tier == "api":
                self._seed_api(m)
        for outcome in ("skipped", "dead_lettered"):
            ins.documents.add(0, {"tier": NO_TIER, "model_version": NO_TIER, "outcome": outcome})

    def _seed_api(self, m: ModelSeries) -> None:
        ins = self.instruments
        ins.tokens.add(0, {**m.version_attrs(), "kind": "billed"})
        ins.requests.add(0, {**m.api_attrs(), "status": "200"})
        ins.retries.add(0, m.api_attrs())
        ins.waits.add(0, m.api_attrs())
        ins.breaker.set(0, m.api_attrs())
        with self._lock:
            self._api_series.add(m)

    # -- recording -----------------------------------------------------------------------
    def record_api_stats(self, m: ModelSeries, stats: ApiCallStats, *, cost_usd: float,
                         breaker_state: int) -> None:
        """One ``ApiEmbedder.embed`` call: cost, billed tokens, requests, retries, waits,
        breaker state and the GenAI histograms."""
        ins = self.instruments
        ins.cost.add(cost_usd, {**m.version_attrs(), "provider": m.provider})
        ins.tokens.add(stats.billed_tokens, {**m.version_attrs(), "kind": "billed"})
        for status, n in stats.requests_by_status.items():
            ins.requests.add(n, {**m.api_attrs(), "status": str(status)})
        ins.retries.add(stats.retries, m.api_attrs())
        ins.waits.add(stats.rate_limit_wait_s, m.api_attrs())
        ins.breaker.set(int(breaker_state), m.api_attrs())
        genai = m.genai_attrs()
        if stats.billed_tokens:
            ins.token_usage.record(stats.billed_tokens, {**genai, "gen_ai.token.type": "input"})
        for latency in stats.latencies_s:
            ins.duration.record(latency, genai)
        with self._lock:
            self._api_series.add(m)

    def record_written(self, docs: Iterable[EmbeddedDocument]) -> Counter[tuple[str, str, str]]:
        """Documents a sink wrote, as ``embedded`` or ``fell_back`` (re-targeted to the local
        tier by the API tier), with their estimated tokens; returns the counts by
        (outcome, tier, version)."""
        counts: Counter[tuple[str, str, str]] = Counter()
        tokens: Counter[tuple[str, str]] = Counter()
        for d in docs:
            counts[(_written_outcome(d), d.tier.value, d.model_version)] += 1
            tokens[(d.tier.value, d.model_version)] += d.est_tokens
        for (outcome, tier, version), n in counts.items():
            self.record_outcome(outcome, tier, version, n)
        for (tier, version), n in tokens.items():
            self.instruments.tokens.add(n, {"tier": tier, "model_version": version, "kind": "estimated"})
        return counts

    def record_outcome(self, outcome: str, tier: str, version: str, n: int = 1) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown document outcome {outcome!r}; expected one of {OUTCOMES}")
        self.instruments.documents.add(n, {"tier": tier, "model_version": version, "outcome": outcome})

    def set_budget(self, period: str, *, limit_usd: float | None, spend_usd: float,
                   moved: int | None = None) -> None:
        """A budget limit (None: no limit, exported as 0), the spend against it and, once a
        run is over, the documents it moved away from the paid tier because of it."""
        self.instruments.budget.set(period, limit_usd, spend_usd, moved)
        if self._budget_push is not None:
            self._budget_push.set(period, limit_usd, spend_usd, moved)

    def end_run(self) -> None:
        """Breaker gauges back to 0: Pushgateway would keep an 'open' from a finished run."""
        with self._lock:
            series = list(self._api_series)
        for m in series:
            self.instruments.breaker.set(0, m.api_attrs())

    # -- export --------------------------------------------------------------------------
    def flush(self) -> bool:
        """Export now; False if an exporter failed (it is logged, never raised)."""
        ok = True
        timeout_ms = self.settings.export_timeout_s * 1000
        for reader in self._periodic:
            ok = bool(reader.force_flush(timeout_millis=timeout_ms)) and ok
        for pusher in self._pushers:
            ok = pusher.push() and ok
        return ok

    def shutdown(self) -> None:
        """Final export, then stop the exporters (idempotent)."""
        if not self._providers:
            return
        self.end_run()
        for pusher in self._pushers:
            pusher.push()
            pusher.stop()
        providers, self._providers = self._providers, []
        for provider in providers:
            provider.shutdown(timeout_millis=self.settings.export_timeout_s * 1000)


# ------------------------------------------------------------------- per process

_state_lock = threading.Lock()
_current: Telemetry | None = None
_atexit_installed = False
_sigterm_installed = False


def get_telemetry(ctx: TelemetryContext, *, driver: bool = False) -> Telemetry:
    """This process's telemetry for ``ctx``: built on first use (or when the settings
    change), seeded and exported once per run. ``driver``: the flow's own process."""
    global _current
    with _state_lock:
        tel = _current
        if tel is None or tel.settings != ctx.settings or (driver and tel.worker):
            if tel is not None:
                tel.shutdown()
            tel = _current = Telemetry(ctx.settings, worker=not driver)
            if tel.enabled:
                _install_exit_hooks()
    if tel.enabled and tel.mark_seeded(ctx.run_id):
        tel.seed(ctx.models)
        tel.flush()
    return tel


def current_telemetry() -> Telemetry | None:
    return _current


def shutdown_telemetry() -> None:
    """Flush and stop this process's telemetry (atexit does this too)."""
    global _current
    with _state_lock:
        tel, _current = _current, None
    if tel is not None:
        tel.shutdown()


def _install_exit_hooks() -> None:
    global _atexit_installed, _sigterm_installed
    if not _atexit_installed:
        atexit.register(shutdown_telemetry)
        _atexit_installed = True
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still flushes
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _sigterm_handler(previous))
    _sigterm_installed = True


def _sigterm_handler(previous: Any) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        _flush_before_exit()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handler


def _flush_before_exit() -> None:
    tel = _current
    if tel is None:
        return

    def final() -> None:
        tel.end_run()
        tel.flush()

    # In a thread with a deadline: the signal may have interrupted this very thread while it
    # held a lock the export needs.
    worker = threading.Thread(target=final, name="tierembed-telemetry-sigterm", daemon=True)
    worker.start()
    worker.join(tel.settings.export_timeout_s)


# ------------------------------------------------------------------- Beam side


def _written_outcome(doc: EmbeddedDocument) -> str:
    return "fell_back" if doc.fell_back else "embedded"


class SinkTelemetry:
    """What a sink DoFn records after a successful write: documents ``embedded`` (or
    ``fell_back``) and their estimated tokens per tier/version, plus run progress, and the
    Beam metrics ``documents.<outcome>.<tier>`` that mirror them. A no-op without a context."""

    def __init__(self, ctx: TelemetryContext | None) -> None:
        self._ctx = ctx
        self._tel: Telemetry | None = None
        self._progress: ProgressRecorder | None = None

    def setup(self) -> None:
        if self._ctx is not None:
            self._tel = get_telemetry(self._ctx)
            self._progress = progress_recorder(self._ctx.progress_dir)

    def written(self, docs: Sequence[EmbeddedDocument]) -> None:
        if self._tel is None or self._progress is None:
            return
        counts = self._tel.record_written(docs)
        for (outcome, tier, _), n in counts.items():
            beam.metrics.Metrics.counter("tierembed", f"documents.{outcome}.{tier}").inc(n)
        fell_back = sum(n for (outcome, _, _), n in counts.items() if outcome == "fell_back")
        self._progress.add(written=len(docs), fell_back=fell_back)

    def teardown(self) -> None:
        if self._progress is not None:
            self._progress.close()
        if self._tel is not None:
            self._tel.flush()


@beam.typehints.with_input_types(DeadLetter)
@beam.typehints.with_output_types(None)
class _RecordDeadLetterFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, ctx: TelemetryContext) -> None:
        self._ctx = ctx
        self._tel: Telemetry | None = None
        self._progress: ProgressRecorder | None = None

    def setup(self) -> None:
        self._tel = get_telemetry(self._ctx)
        self._progress = progress_recorder(self._ctx.progress_dir)

    def process(self, letter: DeadLetter) -> Iterable[None]:
        assert self._tel is not None and self._progress is not None
        tier = letter.tier or NO_TIER
        self._tel.record_outcome("dead_lettered", tier, letter.model_version or NO_TIER)
        beam.metrics.Metrics.counter("tierembed", f"documents.dead_lettered.{tier}").inc()
        self._progress.add(dead_lettered=1)
        return ()

    def teardown(self) -> None:
        if self._progress is not None:
            self._progress.close()


class RecordDeadLetters(beam.PTransform):  # type: ignore[misc]
    """Count every dead letter of the run as ``outcome=dead_lettered`` in
    ``tierembed.documents`` (validation rejects with ``tier="none"``), in the Beam metric
    ``documents.dead_lettered.<tier>`` and in the run progress. A leaf: outputs nothing."""

    def __init__(self, ctx: TelemetryContext) -> None:
        super().__init__()
        self.ctx = ctx

    def expand(self, letters: beam.PCollection[DeadLetter]) -> beam.PCollection[None]:
        return letters | "Record" >> beam.ParDo(_RecordDeadLetterFn(self.ctx))
