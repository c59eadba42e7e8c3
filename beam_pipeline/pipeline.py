"""The one Beam pipeline of a tierembed run.

```
ReadDocuments -> ValidateDocuments -> ScoreDocuments
  -> SkipUnchanged (join by id with ReadStoredHashes: the store's (id, version, hash) rows)
  -> PlanBudget (side input) -> RouteByTier
  -> per "<tier>/<version>" branch: EmbedLocal | EmbedApi (fallback -> local)
  -> WriteEmbeddings per branch (LanceDB | Weaviate) ; every stage's dead letters -> WriteDeadLetters
```

``build_pipeline`` only constructs the graph (no model is loaded, torch is not imported);
``run_pipeline`` runs it with the configured runner and returns the run's Beam counters,
from which the flow builds the run report.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field, replace

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.api_embedder import ApiEmbedderConfig
from beam_pipeline.dead_letters import WriteDeadLetters, dead_letter_prefix
from beam_pipeline.embed_api import FALLBACK, ApiBranch, EmbedApi
from beam_pipeline.embed_local import EmbedLocal
from beam_pipeline.local_embedder import LocalModelSpec
from beam_pipeline.normalize import NormalizeScores
from beam_pipeline.paid_results import MarkPaidResults, PaidLookup
from beam_pipeline.plan import PlanBudget
from beam_pipeline.read import ReadDocuments
from beam_pipeline.route import RouteByTier, branch_tag
from beam_pipeline.score import ScoreDocuments
from beam_pipeline.sinks import LanceDBSinkConfig, SinkConfig, WriteEmbeddings
from beam_pipeline.skip_unchanged import ReadStoredHashes, SkipUnchanged
from beam_pipeline.telemetry import RecordDeadLetters, telemetry_context
from beam_pipeline.validate import DEAD_LETTERS, ValidateDocuments
from store.result_cache import CacheKey
from tiering.backoff import BackoffPolicy
from tiering.documents import Tier
from tiering.errors import ConfigError
from tiering.normalization import uses_rank_normalization
from tiering.packing import RequestLimits
from tiering.pricing import Price, price_for
from tiering.routing import RoutingPolicy, policy_from_settings
from tiering.settings import ApiModelSettings, TierembedSettings
from tiering.validation import ValidationRules
from tiering.versions import Registry

__all__ = [
    "ResolvedApi",
    "PipelineSpec",
    "PipelineOutcome",
    "routing_policy",
    "api_prices",
    "sink_config",
    "worker_share",
    "local_threads",
    "build_pipeline",
    "run_pipeline",
]

_log = logging.getLogger(__name__)
# Runners that read --direct_running_mode / --direct_num_workers (FnApiRunner, the default,
# and the DirectRunner that wraps it).
_LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "direct")


@dataclass(frozen=True, slots=True)
class ResolvedApi:
    """The API endpoint a run talks to, decided by the flow (see flows.endpoint)."""

    base_url: str | None
    api_key: str
    provider: str
    document_input_type: str | None = None
    query_input_type: str | None = None
    max_tokens_per_input: int | None = None  # caps tighter than the model's, for stand-ins
    max_tokens_per_request: int | None = None
    max_in_flight: int | None = None  # tighter than api.max_in_flight: a stand-in on this CPU

    def __repr__(self) -> str:
        return f"ResolvedApi(base_url={self.base_url!r}, provider={self.provider!r}, api_key=***)"


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    settings: TierembedSettings
    source: str
    run_id: str
    budget_usd: float | None
    api: ResolvedApi
    full_refresh: bool = False  # re-embed unchanged documents too: the store is not read
    registry: Registry | None = None
    """The version registry at the start of the run: live weights and shadow samples."""
    backfill: str | None = None
    """Backfill mode: embed every document with this version only (flows.backfill)."""


@dataclass(frozen=True)
class PipelineOutcome:
    run_id: str
    state: str
    counters: dict[str, int] = field(default_factory=dict)
    dead_letter_prefix: str = ""


def routing_policy(settings: TierembedSettings, registry: Registry | None = None,
                   backfill: str | None = None) -> RoutingPolicy:
    return policy_from_settings(settings, registry, backfill)


def api_prices(settings: TierembedSettings) -> dict[str, Price]:
    return {m.version: price_for(m.model, m.price_per_million_tokens) for m in settings.api.models}


def sink_config(settings: TierembedSettings) -> SinkConfig:
    if settings.sink.kind == "lancedb":
        lc = settings.sink.lancedb
        return LanceDBSinkConfig(lc.uri, lc.table_prefix, settings.sink.batch_size)
    if settings.sink.kind == "weaviate":
        # lazy: only Weaviate runs need the Weaviate sink
        from beam_pipeline.sinks.weaviate_sink import WeaviateSinkConfig

        versions = [m.version for m in settings.local.models] + [m.version for m in settings.api.models]
        return WeaviateSinkConfig.from_settings(settings.sink, versions)
    raise ConfigError(f"unknown sink.kind {settings.sink.kind!r}; use 'lancedb' or 'weaviate'")


def _direct_workers(settings: TierembedSettings) -> int:
    """Worker processes or threads the local runner runs at once (1 in memory, or elsewhere)."""
    ps = settings.pipeline
    if ps.runner in _LOCAL_RUNNERS and ps.direct_running_mode != "in_memory":
        return ps.direct_num_workers or os.cpu_count() or 1
    return 1


def worker_share(settings: TierembedSettings) -> float:
    """Each API worker's share of the rate limits and the run budget."""
    if settings.api.worker_share is not None:
        return settings.api.worker_share
    return 1.0 / _direct_workers(settings)


def local_threads(settings: TierembedSettings) -> int | None:
    """torch CPU threads per local-model worker: ``local.cpu_threads``, else the cores split
    evenly between the local runner's worker processes (so N workers x torch's default of
    all cores never oversubscribe the machine), else torch's default."""
    if settings.local.cpu_threads is not None:
        return settings.local.cpu_threads
    ps = settings.pipeline
    if ps.runner in _LOCAL_RUNNERS and ps.direct_running_mode == "multi_processing":
        return max(1, (os.cpu_count() or 1) // _direct_workers(settings))
    return None


def _budget_share(policy: RoutingPolicy, version: str) -> float:
    """``version``'s share of the run budget, in proportion to what it is expected to spend:
    a live version its traffic weight, a shadow API version its sample of the tier (so the
    caps of all API versions add up to the run budget); a backfill's version gets it all."""
    if policy.backfill is not None:
        return 1.0 if policy.backfill[1] == version else 0.0
    weights = dict(policy.api_versions)
    total = sum(weights.values())
    samples = {sh.version: sh.sample for sh in policy.shadows if sh.tier is Tier.API}
    expected = weights.get(version, 0.0) / total if total else 0.0
    return (expected or samples.get(version, 0.0)) / (1.0 + sum(samples.values()))


def _api_branch(spec: PipelineSpec, model: ApiModelSettings, price: Price,
                policy: RoutingPolicy) -> ApiBranch:
    """One API version's branch, with this worker's share of the limits and of the budget.

    Provider limits are per endpoint and model: versions that call the same model split its
    RPM and TPM evenly. The run budget (``spec.budget_usd``) is split across the API versions
    by traffic weight (evenly when the weights are equal) and becomes the runtime spend cap.
    Every share is then multiplied by ``api.worker_share``: rate limits and budgets are
    global while workers are not, so with N workers running the API stage at once each one
    gets 1/N (set ``api.worker_share: 1/N``).
    """
    api = spec.settings.api
    share = worker_share(spec.settings)
    same_model = sum(1 for m in api.models if m.model == model.model)
    budget_share = _budget_share(policy, model.version)
    cfg = ApiEmbedderConfig(
        base_url=spec.api.base_url,
        api_key=spec.api.api_key,
        model=model.model,
        provider=spec.api.provider,
        limits=RequestLimits(
            model.max_inputs_per_request,
            min(model.max_tokens_per_request,
                spec.api.max_tokens_per_request or model.max_tokens_per_request),
            min(model.max_tokens_per_input,
                spec.api.max_tokens_per_input or model.max_tokens_per_input),
        ),
        requests_per_minute=max(1, int(api.requests_per_minute * share / same_model)),
        tokens_per_minute=max(1, int(api.tokens_per_minute * share / same_model)),
        max_in_flight=min(api.max_in_flight, spec.api.max_in_flight or api.max_in_flight),
        timeout_s=api.timeout_s,
        backoff=BackoffPolicy(api.retry.base_delay_s, api.retry.max_delay_s,
                              api.retry.max_attempts, api.retry.max_total_s),
        breaker_failure_threshold=api.breaker.failure_threshold,
        breaker_reset_after_s=api.breaker.reset_after_s,
        dimensions=model.dimensions,
        input_type=spec.api.document_input_type,
        spend_cap_usd=None if spec.budget_usd is None else spec.budget_usd * budget_share * share,
        price=price,
        breaker_max_wait_s=api.breaker.max_wait_s,
        max_request_share=api.max_request_share,
    )
    return ApiBranch(model.version, cfg, price, api.breaker.on_open, policy.local_versions,
                     run_id=spec.run_id, ledger_path=spec.settings.budget.ledger_path,
                     result_cache_path=api.result_cache.path,
                     backfill=policy.backfill is not None)


def _budget_decides(spec: PipelineSpec) -> bool:
    """A budget and no trained router: the plan spends the budget by value per dollar."""
    r = spec.settings.routing
    return r.budget_decides and spec.budget_usd is not None and r.classifier_path is None


def build_pipeline(p: beam.Pipeline, spec: PipelineSpec) -> None:
    """Construct the whole graph on ``p`` (no model is loaded here)."""
    s = spec.settings
    rules = ValidationRules(s.input.id_field, s.input.text_field, s.input.metadata_field,
                            s.input.max_text_chars)
    policy = replace(routing_policy(s, spec.registry, spec.backfill), budget_decides=_budget_decides(spec))
    prices = api_prices(s)
    per_token = {v: float(pr.per_token) for v, pr in prices.items()}
    telemetry = telemetry_context(s, spec.run_id, spec.api.provider)

    from beam_pipeline.sinks.weaviate_sink import WeaviateSinkConfig

    sink = sink_config(s)
    assert isinstance(sink, LanceDBSinkConfig | WeaviateSinkConfig), type(sink)

    raw = p | "ReadDocuments" >> ReadDocuments(spec.source, s.input.format, s.input.max_record_bytes)
    valid = raw | "ValidateDocuments" >> ValidateDocuments(rules)
    scored = valid["documents"] | "ScoreDocuments" >> ScoreDocuments(s.routing.classifier_path)
    if uses_rank_normalization(s.routing.score_normalization, s.routing.classifier_path):
        scored = scored | "NormalizeScores" >> NormalizeScores()
    declared = [(Tier.LOCAL, m.version) for m in s.local.models]
    declared += [(Tier.API, m.version) for m in s.api.models]
    if not spec.full_refresh:
        stored = p | "ReadStoredHashes" >> ReadStoredHashes(sink, [v for _, v in declared])
        scored = scored | "SkipUnchanged" >> SkipUnchanged(stored)
    branches = {m.version: _api_branch(spec, m, prices[m.version], policy) for m in s.api.models}
    if s.api.result_cache.path and branches:
        lookups = {v: PaidLookup(CacheKey(v, b.config.model, b.config.dimensions, b.config.input_type),
                                 b.config.max_tokens_per_input) for v, b in branches.items()}
        scored = scored | "MarkPaidResults" >> MarkPaidResults(s.api.result_cache.path, policy, lookups)
    plan = scored | "PlanBudget" >> PlanBudget(policy, per_token, spec.budget_usd)
    routed = scored | "RouteByTier" >> RouteByTier(policy, per_token, plan, declared)

    # No Flatten between the embedding stages and the writer: Beam's in-process runner
    # materializes every multi-input Flatten (fn_api_runner/translations.py, sink_flattens:
    # "Actually attempt to sink rather than always materialize" is a TODO in 2.x), so one
    # Flatten before the writer held every embedded document, vector and text, in memory
    # until the last was embedded, and nothing reached the store before then. Each embedding
    # branch (an API version, a local version) gets its own writer instead, fused with it:
    # documents are written as they are embedded. The Flatten of a local version's input
    # (routed documents plus the API fallbacks) stays: it holds documents, not vectors, and
    # keeps one EmbedLocal per local version (one model load per process).
    sink = replace(sink, telemetry=telemetry)  # every writer reports documents written and progress
    dead = [valid[DEAD_LETTERS]]
    embedded: list[tuple[str, beam.PCollection]] = []
    fallbacks = []
    for model in s.api.models:
        tag = branch_tag(Tier.API, model.version)
        out = routed[tag] | f"EmbedApi[{model.version}]" >> EmbedApi(
            replace(branches[model.version], telemetry=telemetry)
        )
        embedded.append((f"api:{model.version}", out["embedded"]))
        fallbacks.append(out[FALLBACK])
        dead.append(out[DEAD_LETTERS])
    fallback = tuple(fallbacks) | "FlattenFallback" >> beam.Flatten()
    for m in s.local.models:
        mine = fallback | f"Fallback[{m.version}]" >> beam.Filter(
            lambda r, v=m.version: r.model_version == v
        )
        branch_in = (routed[branch_tag(Tier.LOCAL, m.version)], mine) | (
            f"LocalInput[{m.version}]" >> beam.Flatten()
        )
        lspec = LocalModelSpec(m.model, s.local.device, s.local.precision, s.local.batch_size,
                               m.max_input_tokens, local_threads(s))
        out = branch_in | f"EmbedLocal[{m.version}]" >> EmbedLocal(lspec, m.version)
        embedded.append((f"local:{m.version}", out["embedded"]))
        dead.append(out[DEAD_LETTERS])
    for name, docs in embedded:
        written = docs | f"WriteEmbeddings[{name}]" >> WriteEmbeddings(sink)
        dead.append(written["dead_letters"])
    letters = tuple(dead) | "FlattenDeadLetters" >> beam.Flatten()
    letters | "WriteDeadLetters" >> WriteDeadLetters(s.dead_letters.dir, spec.run_id)
    letters | "RecordDeadLetters" >> RecordDeadLetters(telemetry)


def pipeline_options(settings: TierembedSettings) -> PipelineOptions:
    ps = settings.pipeline
    flags = [f"--runner={ps.runner}", *ps.options]
    if ps.runner in _LOCAL_RUNNERS:
        flags += [f"--direct_running_mode={ps.direct_running_mode}",
                  f"--direct_num_workers={ps.direct_num_workers}"]
    return PipelineOptions(flags)


def _counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    totals: dict[str, int] = {}
    metrics = result.metrics().query(MetricsFilter().with_namespace("tierembed"))
    for counter in metrics["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def run_pipeline(spec: PipelineSpec) -> PipelineOutcome:
    """Build and run the pipeline to completion; return its counters."""
    options = pipeline_options(spec.settings)
    p = beam.Pipeline(options=options)
    # Beam makes a temp folder at construction and removes it at the end of run(); a killed
    # run left it behind. Only cross-language (external) transforms use it and this pipeline
    # has none (Beam 2.78: pipeline.py, transforms/external.py), so it goes at once.
    shutil.rmtree(p.local_tempdir, ignore_errors=True)
    build_pipeline(p, spec)
    result = p.run()
    result.wait_until_finish()
    return PipelineOutcome(
        run_id=spec.run_id,
        state=str(result.state),
        counters=_counters(result),
        dead_letter_prefix=dead_letter_prefix(spec.settings.dead_letters.dir, spec.run_id),
    )
