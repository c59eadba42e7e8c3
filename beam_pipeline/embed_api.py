"""EmbedApi: the API tier as a Beam stage.

A thin DoFn around :class:`beam_pipeline.api_embedder.ApiEmbedder` (which holds the one
retry layer, the rate limiters, the circuit breaker and the spend cap; see its docstring).
The embedder is built in ``setup`` and closed in ``teardown``, one per DoFn instance: its
limits and spend cap are that worker's share (``api.worker_share``). Documents longer than
the embedder's per-input limit (the model's, capped by this worker's tokens per minute) are
chunked (never truncated), the chunks of a document packed into one request when they fit,
and their chunk vectors aggregated. Billed tokens come from each reply's ``usage`` and are
apportioned to inputs in whole tokens by their estimated tokens, so a document's
``billed_tokens`` and ``cost_usd`` are exact and the documents of a reply add up to its
bill. A reply without ``usage`` is charged at the estimate: those documents' figures are
estimates, counted apart in ``unmetered_tokens.api.<v>`` (never in ``billed_tokens``) so
the report can add an estimated figure.

Batching: ``BatchElements`` with a fixed size in *estimated tokens* (by default half a
minute of this worker's token budget), not the adaptive doc count: each ``embed`` call then
keeps its requests in flight long enough that the pause at the edge of a batch (the last
replies of one batch, then the next batch's first request) costs little of the provider's
rate, and the local buckets keep refilling during it.

Durable paid results: every reply is handed over as it arrives; its vectors go to the
result cache (:mod:`store.result_cache`, ``api.result_cache``) and its bill to the spend
ledger (``SpendLedger.add_spend``) at once, and inputs already in the cache are not sent
again (their documents cost nothing in this run; counters ``cached.api.<v>`` documents and
``cached_chunks.api.<v>``). The API tier's progress (documents, tokens, dollars, requests,
429s, rate-limit waits) goes to the run's progress files as replies arrive.

Outputs: ``embedded``; ``fallback`` (documents re-targeted to the local tier because the
breaker stayed open longer than ``api.breaker.max_wait_s`` or the run budget was reached,
the reason appended to the document's route reason); ``dead_letters``. In coverage mode a
document that also gets the local vector (``RoutedDocument.has_local_target``) is never
re-targeted to local (that would write its local vector twice): its API target is
dead-lettered, retryable, instead.

Counters (namespace ``tierembed``): ``embedded.api.<v>``, ``chunks.api.<v>``,
``chunked.api.<v>``, ``est_tokens.api.<v>`` (estimates) apart from ``billed_tokens.api.<v>``
(every billed token of every reply), ``unmetered_tokens.api.<v>`` (estimated tokens of
replies without ``usage``) and ``timed_out_tokens.api.<v>`` (estimated tokens of requests
that timed out, which the provider may have billed unseen), ``fell_back.api.<v>`` (every
document re-targeted to local, whatever the reason) and its subset ``fell_back_budget.api.<v>``,
``api_requests.<v>.<status>``, ``api_retries.<v>``, ``rate_limit_wait_ms.<v>``,
``api_breaker.<v>.<from>-><to>`` (each breaker transition), ``api_breaker_wait_ms.<v>``,
``api_size_splits.<v>``, ``api_budget_splits.<v>``, ``dead_letters.embed``; distribution
``api_latency_ms.<v>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import apache_beam as beam
from apache_beam import pvalue

from beam_pipeline.api_embedder import (
    ApiCallStats,
    ApiEmbedder,
    ApiEmbedderConfig,
    ApiInput,
    ApiReply,
    CallFailure,
    EmbedOutcome,
)
from beam_pipeline.progress import ProgressRecorder, progress_recorder
from beam_pipeline.records import doc_payload, make_embedded
from beam_pipeline.tagged import TaggedOutputsTransform
from beam_pipeline.telemetry import ModelSeries, Telemetry, TelemetryContext, get_telemetry
from beam_pipeline.validate import DEAD_LETTERS
from store.ledger import SpendLedger, SpendLine
from store.result_cache import CachedVector, CacheKey, ResultCache
from tiering.ab import assign_version
from tiering.chunking import aggregate_vectors, chunk_text, estimate_tokens
from tiering.documents import DeadLetter, EmbeddedDocument, RoutedDocument, Tier
from tiering.pricing import Price, cost_usd

__all__ = ["EmbedApi", "ApiBranch", "FALLBACK", "BUDGET_REASON", "BREAKER_REASON", "default_batch_tokens"]

_log = logging.getLogger(__name__)
FALLBACK = "fallback"
STAGE = "embed"
BUDGET_REASON = "run budget reached"
BREAKER_REASON = "circuit open"
_NOT_SENT_STATUS = {"CircuitOpen": "breaker_open", "RunBudgetReached": "over_budget"}


@dataclass(frozen=True, slots=True)
class ApiBranch:
    """One API model version: its embedder config (this worker's share), price and
    what happens to documents the breaker or the spend cap keeps from the API."""

    version: str
    config: ApiEmbedderConfig
    price: Price
    on_breaker_open: str  # "local" | "dead_letter"
    local_versions: tuple[tuple[str, float], ...]
    telemetry: TelemetryContext | None = None  # cost, tokens, requests ... (beam_pipeline.telemetry)
    run_id: str | None = None
    ledger_path: str | None = None
    """The spend ledger that records each reply's bill as it arrives (with ``run_id``)."""
    result_cache_path: str | None = None
    """The result cache every reply's vectors go to, read before paying; None: off."""
    backfill: bool = False
    """A backfill run: what the breaker or the spend cap keeps from the API is deferred to
    the next backfill run (counted ``backfill_deferred``), never re-targeted or dead-lettered."""

    def __post_init__(self) -> None:
        if self.on_breaker_open not in ("local", "dead_letter"):
            raise ValueError(
                f"on_breaker_open must be 'local' or 'dead_letter', got {self.on_breaker_open!r}"
            )


def _counter(name: str) -> beam.metrics.metricbase.Counter:
    return beam.metrics.Metrics.counter("tierembed", name)


@dataclass
class _Batch:
    """The inputs of one ``process`` call: which were sent (by position in the embed call)
    and how many inputs each document still waits for."""

    inputs: list[ApiInput]
    sent: list[int]
    waiting: dict[int, int] = field(default_factory=dict)


@beam.typehints.with_input_types(Sequence[RoutedDocument])
@beam.typehints.with_output_types(EmbeddedDocument, dead_letters=DeadLetter, fallback=RoutedDocument)
class _ApiEmbedFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, branch: ApiBranch) -> None:
        self._branch = branch
        self._embedder: ApiEmbedder | None = None
        self._telemetry: Telemetry | None = None
        self._cache: ResultCache | None = None
        self._cache_key: CacheKey | None = None
        self._ledger: SpendLedger | None = None
        self._progress: ProgressRecorder | None = None
        self._batch: _Batch | None = None
        self._seen = (0, 0, 0.0)  # requests, 429s, waits already reported as progress

    def setup(self) -> None:
        self._embedder = ApiEmbedder(self._branch.config, on_reply=self._on_reply)
        if self._branch.telemetry is not None:
            self._telemetry = get_telemetry(self._branch.telemetry)
            self._progress = progress_recorder(self._branch.telemetry.progress_dir)
        if self._branch.result_cache_path:
            cfg = self._branch.config
            self._cache = ResultCache(self._branch.result_cache_path)
            self._cache_key = CacheKey(self._branch.version, cfg.model, cfg.dimensions, cfg.input_type)
        if self._branch.ledger_path and self._branch.run_id:
            self._ledger = SpendLedger(self._branch.ledger_path)

    def teardown(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
        if self._progress is not None:
            self._progress.close()  # what the throttle held back

    def process(self, batch: Sequence[RoutedDocument]) -> Iterator[object]:
        assert self._embedder is not None
        limit = self._embedder.max_tokens_per_input  # what the embedder will really send
        per_doc = [chunk_text(r.scored.document.text, limit) for r in batch]
        inputs = [ApiInput(c, estimate_tokens(c), group=doc)
                  for doc, chunks in enumerate(per_doc) for c in chunks]
        outcome = self._embed(inputs)
        self._record_stats(outcome)
        start = 0
        for routed, chunks in zip(batch, per_doc, strict=True):
            idxs = list(range(start, start + len(chunks)))
            start += len(chunks)
            yield from self._resolve(routed, idxs, outcome)

    # -- paid results, durable as they arrive --------------------------------------------
    def _embed(self, inputs: list[ApiInput]) -> EmbedOutcome:
        """Embed what the result cache does not already hold; the outcome by input index."""
        assert self._embedder is not None
        cached: dict[int, CachedVector] = {}
        if self._cache is not None and self._cache_key is not None:
            cached = self._cache.get_many(self._cache_key, [i.text for i in inputs])
        sent = [k for k in range(len(inputs)) if k not in cached]
        waiting: dict[int, int] = {}
        for k in sent:
            group = inputs[k].group
            assert group is not None
            waiting[group] = waiting.get(group, 0) + 1
        self._batch = _Batch(inputs, sent, waiting)
        try:
            part = self._embedder.embed([inputs[k] for k in sent]) if sent else EmbedOutcome()
        finally:
            self._batch = None
        return _merged(part, sent, cached)

    def _on_reply(self, reply: ApiReply) -> None:
        """Called by the embedder as each 200 arrives: cache, ledger, progress."""
        batch = self._batch
        assert batch is not None
        originals = [batch.sent[i] for i in reply.idxs]
        billed = sum(reply.billed_tokens)
        price = self._branch.price
        run_id = self._branch.run_id or "unknown"
        if self._ledger is not None:  # the money first: a kill between the two loses a vector
            est = sum(batch.inputs[k].est_tokens for k in originals)
            groups = {batch.inputs[k].group for k in originals}
            self._ledger.add_spend(run_id, SpendLine(
                "api", self._branch.version, self._branch.config.model, len(groups), billed,
                cost_usd(est, price), cost_usd(billed, price)))
        if self._cache is not None and self._cache_key is not None:
            texts = [batch.inputs[k].text for k in originals]
            self._cache.put_many(self._cache_key, zip(texts, reply.vectors, reply.billed_tokens,
                                                      strict=True), run_id)
        self._report_progress(originals, billed, reply)

    def _report_progress(self, originals: list[int], billed: int, reply: ApiReply) -> None:
        batch = self._batch
        if self._progress is None or batch is None:
            return
        done = 0
        for k in originals:
            group = batch.inputs[k].group
            assert group is not None
            batch.waiting[group] -= 1
            done += batch.waiting[group] == 0
        self._progress.add(api_documents=done, api_tokens=billed,
                           api_cost_usd=cost_usd(billed, self._branch.price),
                           **self._request_progress(reply.stats))

    def _request_progress(self, stats: ApiCallStats) -> dict[str, float]:
        """Requests, 429s and waits of the running call not yet reported as progress."""
        requests = sum(stats.requests_by_status.values())
        r429 = stats.requests_by_status.get("429", 0)
        seen_requests, seen_429, seen_wait = self._seen
        self._seen = (requests, r429, stats.rate_limit_wait_s)
        return {"api_requests": max(0, requests - seen_requests), "api_429": max(0, r429 - seen_429),
                "api_wait_s": max(0.0, stats.rate_limit_wait_s - seen_wait)}

    def _resolve(self, routed: RoutedDocument, idxs: list[int], outcome: EmbedOutcome) -> Iterator[object]:
        failed = [outcome.failures[i] for i in idxs if i in outcome.failures]
        if failed:
            yield pvalue.TaggedOutput(DEAD_LETTERS, self._dead(routed, failed[0]))
        elif any(i in outcome.short_circuited for i in idxs):
            yield from self._breaker_open(routed)
        elif any(i in outcome.over_budget for i in idxs):
            yield from self._to_local(routed, BUDGET_REASON, "RunBudgetReached")
        else:
            yield self._embedded(routed, idxs, outcome)

    def _embedded(self, routed: RoutedDocument, idxs: list[int], outcome: EmbedOutcome) -> object:
        version = self._branch.version
        billed = sum(outcome.billed_tokens.get(i, 0) for i in idxs)  # cached inputs: paid before
        cached = sum(1 for i in idxs if i not in outcome.billed_tokens)
        if cached:
            _counter(f"cached_chunks.api.{version}").inc(cached)
            if cached == len(idxs):
                _counter(f"cached.api.{version}").inc()
        vector = aggregate_vectors([outcome.vectors[i] for i in idxs])
        _counter(f"embedded.api.{version}").inc()
        _counter(f"chunks.api.{version}").inc(len(idxs))
        _counter(f"est_tokens.api.{version}").inc(routed.scored.est_tokens)
        if len(idxs) > 1:
            _counter(f"chunked.api.{version}").inc()
        return make_embedded(routed, self._branch.config.model, vector, len(idxs),
                             billed_tokens=float(billed), cost_usd=cost_usd(billed, self._branch.price))

    def _breaker_open(self, routed: RoutedDocument) -> Iterator[object]:
        if self._branch.on_breaker_open == "local":
            yield from self._to_local(routed, BREAKER_REASON, "CircuitOpen")
            return
        failure = CallFailure("breaker_open", "CircuitOpen", "endpoint failing; circuit breaker open",
                              True, False)
        yield pvalue.TaggedOutput(DEAD_LETTERS, self._dead(routed, failure))

    def _to_local(self, routed: RoutedDocument, why: str, error_type: str) -> Iterator[object]:
        """A shadow target or a backfill document is never re-targeted: the shadow's document
        keeps its live vector (counted ``shadow_not_sent.api.<v>``), the backfill's waits for
        the next backfill run (``backfill_not_sent``, part of the report's
        ``backfill_deferred``). Otherwise: ``_retarget``."""
        if routed.shadow:
            _counter(f"shadow_not_sent.api.{self._branch.version}").inc()
            return
        if self._branch.backfill:
            _counter("backfill_not_sent").inc()
            return
        if error_type == "RunBudgetReached":
            _counter(f"fell_back_budget.api.{self._branch.version}").inc()
            if routed.has_local_target:
                # coverage mode: the budget keeps the document local-only, as the plan does
                # for the documents it does not admit; nothing failed, nothing to replay
                _counter(f"budget_kept_local.api.{self._branch.version}").inc()
                return
        yield self._retarget(routed, why, error_type)

    def _retarget(self, routed: RoutedDocument, why: str, error_type: str) -> pvalue.TaggedOutput:
        """Re-target a document to the local tier, recording why on the document; one that
        already has a local target (coverage mode) keeps it and its API target is
        dead-lettered, retryable (the breaker was open: replay adds the API vector), instead
        of writing the local vector twice."""
        if routed.has_local_target:
            failure = CallFailure(
                _NOT_SENT_STATUS[error_type], error_type,
                f"{why}; the document keeps its local vector (coverage mode), its API vector can "
                "be added later", True, False)
            return pvalue.TaggedOutput(DEAD_LETTERS, self._dead(routed, failure))
        local_version = assign_version(routed.id, self._branch.local_versions, salt="ab-local")
        _counter(f"fell_back.api.{self._branch.version}").inc()
        return pvalue.TaggedOutput(FALLBACK, replace(
            routed, tier=Tier.LOCAL, model_version=local_version, fell_back=True,
            reason=routed.reason + f"; API {self._branch.version}: {why} -> local {local_version}",
        ))

    def _dead(self, routed: RoutedDocument, failure: CallFailure) -> DeadLetter:
        _counter("dead_letters.embed").inc()
        doc = routed.scored.document
        next_step = ("retryable: replay with `tierembed replay`" if failure.retryable
                     else "terminal: fix the document, then replay it")
        return DeadLetter(
            stage=STAGE,
            error_type=failure.error_type,
            message=f"document {doc.id!r}: API {self._branch.config.model} ({self._branch.version}) "
            f"answered {failure.status}: {failure.message}; {next_step}",
            retryable=failure.retryable,
            doc_id=doc.id,
            source=doc.source,
            payload=doc_payload(routed),
            tier=Tier.API.value,
            model_version=self._branch.version,
            extra=(("status", failure.status),),
        )

    def _record_stats(self, outcome: EmbedOutcome) -> None:
        version = self._branch.version
        stats = outcome.stats
        if self._progress is not None:  # what came after the call's last reply (failures)
            self._progress.add(**self._request_progress(stats))
        self._seen = (0, 0, 0.0)  # the next embed call starts its stats afresh
        for transition, n in stats.breaker_transitions.items():
            _counter(f"api_breaker.{version}.{transition}").inc(n)
        for name, value in (("api_breaker_wait_ms", int(stats.breaker_wait_s * 1000)),
                            ("api_size_splits", stats.size_splits),
                            ("api_budget_splits", stats.budget_splits)):
            if value:
                _counter(f"{name}.{version}").inc(value)
        for status, n in stats.requests_by_status.items():
            _counter(f"api_requests.{version}.{status}").inc(n)
        _counter(f"api_retries.{version}").inc(stats.retries)
        _counter(f"billed_tokens.api.{version}").inc(stats.billed_tokens)
        _counter(f"rate_limit_wait_ms.{version}").inc(int(stats.rate_limit_wait_s * 1000))
        if stats.unmetered_tokens:
            _counter(f"unmetered_tokens.api.{version}").inc(stats.unmetered_tokens)
        if stats.timed_out_est_tokens:
            _counter(f"timed_out_tokens.api.{version}").inc(stats.timed_out_est_tokens)
        dist = beam.metrics.Metrics.distribution("tierembed", f"api_latency_ms.{version}")
        for latency in stats.latencies_s:
            dist.update(int(latency * 1000))
        if self._telemetry is not None and self._embedder is not None:
            cfg = self._branch.config
            self._telemetry.record_api_stats(
                ModelSeries("api", version, cfg.provider, cfg.model), stats,
                cost_usd=float(stats.billed_tokens * self._branch.price.per_token),
                breaker_state=int(self._embedder.breaker_state))


def default_batch_tokens(config: ApiEmbedderConfig) -> int:
    """Half a minute of this worker's token budget, at least one full request."""
    return max(config.limits.max_tokens, config.tokens_per_minute // 2)


class EmbedApi(TaggedOutputsTransform):
    """RoutedDocuments of one API version -> ``embedded``, ``fallback``, ``dead_letters``."""

    def __init__(self, branch: ApiBranch, batch_tokens: int | None = None) -> None:
        super().__init__()
        self.branch = branch
        self.batch_tokens = batch_tokens or default_batch_tokens(branch.config)

    def expand(self, docs: beam.PCollection[RoutedDocument]) -> dict[str, beam.PCollection]:
        out = (
            docs
            | "Batch" >> beam.BatchElements(min_batch_size=self.batch_tokens,
                                            max_batch_size=self.batch_tokens,
                                            element_size_fn=_est_tokens)
            | "Embed" >> beam.ParDo(_ApiEmbedFn(self.branch)).with_outputs(
                DEAD_LETTERS, FALLBACK, main="embedded"
            )
        )
        return {"embedded": out.embedded, FALLBACK: out[FALLBACK], DEAD_LETTERS: out[DEAD_LETTERS]}


def _est_tokens(routed: RoutedDocument) -> int:
    return max(1, routed.scored.est_tokens)


def _merged(part: EmbedOutcome, sent: Sequence[int], cached: dict[int, CachedVector]) -> EmbedOutcome:
    """The embed call's outcome (indexed by position among the inputs sent) and the cached
    vectors, indexed by input. Cached inputs get a vector and no billed tokens."""
    out = EmbedOutcome(stats=part.stats)
    for pos, k in enumerate(sent):
        if pos in part.vectors:
            out.vectors[k] = part.vectors[pos]
            out.billed_tokens[k] = part.billed_tokens[pos]
        if pos in part.failures:
            out.failures[k] = part.failures[pos]
        if pos in part.short_circuited:
            out.short_circuited.add(k)
        if pos in part.over_budget:
            out.over_budget.add(k)
        if pos in part.unmetered:
            out.unmetered.add(k)
    for k, hit in cached.items():
        out.vectors[k] = hit.vector
    return out
