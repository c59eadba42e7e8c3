"""EmbedApi: the API tier as a Beam stage.

A thin DoFn around :class:`beam_pipeline.api_embedder.ApiEmbedder` (which holds the one
retry layer, the rate limiters and the circuit breaker; see its docstring). The embedder is
built in ``setup`` and closed in ``teardown``. Documents longer than the model's per-input
limit are chunked (never truncated) and their chunk vectors aggregated. Billed tokens come
from each reply's ``usage`` and are attributed to documents in proportion to their tokens.

Outputs: ``embedded``; ``fallback`` (documents the open breaker sent to the local tier,
already re-targeted); ``dead_letters``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import apache_beam as beam
from apache_beam import pvalue

from tiering.ab import assign_version
from tiering.chunking import aggregate_vectors, chunk_text, estimate_tokens
from tiering.documents import DeadLetter, RoutedDocument, Tier
from tiering.pricing import Price

from beam_pipeline.api_embedder import ApiEmbedder, ApiEmbedderConfig, ApiInput, CallFailure, EmbedOutcome
from beam_pipeline.records import doc_payload, make_embedded
from beam_pipeline.validate import DEAD_LETTERS

__all__ = ["EmbedApi", "ApiBranch", "FALLBACK"]

_log = logging.getLogger(__name__)
FALLBACK = "fallback"
STAGE = "embed"


@dataclass(frozen=True, slots=True)
class ApiBranch:
    version: str
    config: ApiEmbedderConfig
    price: Price
    on_breaker_open: str  # "local" | "dead_letter"
    local_versions: tuple[tuple[str, float], ...]


class _ApiEmbedFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, branch: ApiBranch) -> None:
        self._branch = branch
        self._embedder: ApiEmbedder | None = None

    def setup(self) -> None:
        self._embedder = ApiEmbedder(self._branch.config)

    def teardown(self) -> None:
        if self._embedder is not None:
            self._embedder.close()

    def process(self, batch: Sequence[RoutedDocument]) -> Iterator[object]:
        assert self._embedder is not None
        limit = self._branch.config.limits.max_tokens_per_input
        per_doc = [chunk_text(r.scored.document.text, limit) for r in batch]
        inputs = [ApiInput(c, estimate_tokens(c)) for chunks in per_doc for c in chunks]
        outcome = self._embedder.embed(inputs)
        self._record_stats(outcome)
        start = 0
        for routed, chunks in zip(batch, per_doc, strict=True):
            idxs = range(start, start + len(chunks))
            start += len(chunks)
            yield from self._resolve(routed, list(idxs), outcome)

    def _resolve(self, routed: RoutedDocument, idxs: list[int], outcome: EmbedOutcome) -> Iterator[object]:
        version = self._branch.version
        failed = [outcome.failures[i] for i in idxs if i in outcome.failures]
        counter = beam.metrics.Metrics.counter
        if failed:
            yield pvalue.TaggedOutput(DEAD_LETTERS, self._dead(routed, failed[0]))
            return
        if any(i in outcome.short_circuited for i in idxs):
            yield from self._breaker_open(routed)
            return
        billed = sum(outcome.billed_tokens[i] for i in idxs)
        vector = aggregate_vectors([outcome.vectors[i] for i in idxs])
        counter("tierembed", f"embedded.api.{version}").inc()
        counter("tierembed", f"chunks.api.{version}").inc(len(idxs))
        counter("tierembed", f"est_tokens.api.{version}").inc(routed.scored.est_tokens)
        if len(idxs) > 1:
            counter("tierembed", f"chunked.api.{version}").inc()
        yield make_embedded(routed, self._branch.config.model, vector, len(idxs),
                            billed_tokens=billed, cost_usd=cost_usd_float(billed, self._branch.price))

    def _breaker_open(self, routed: RoutedDocument) -> Iterator[object]:
        if self._branch.on_breaker_open == "local":
            local_version = assign_version(routed.id, self._branch.local_versions, salt="ab-local")
            beam.metrics.Metrics.counter("tierembed", f"fell_back.api.{self._branch.version}").inc()
            yield pvalue.TaggedOutput(FALLBACK, replace(
                routed, tier=Tier.LOCAL, model_version=local_version,
                reason=routed.reason + f"; API {self._branch.version} circuit open -> local",
            ))
            return
        failure = CallFailure("breaker_open", "CircuitOpen", "endpoint failing; circuit breaker open",
                              True, False)
        yield pvalue.TaggedOutput(DEAD_LETTERS, self._dead(routed, failure))

    def _dead(self, routed: RoutedDocument, failure: CallFailure) -> DeadLetter:
        beam.metrics.Metrics.counter("tierembed", "dead_letters.embed").inc()
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
        counter = beam.metrics.Metrics.counter
        stats = outcome.stats
        for status, n in stats.requests_by_status.items():
            counter("tierembed", f"api_requests.{version}.{status}").inc(n)
        counter("tierembed", f"api_retries.{version}").inc(stats.retries)
        counter("tierembed", f"billed_tokens.api.{version}").inc(stats.billed_tokens)
        counter("tierembed", f"rate_limit_wait_ms.{version}").inc(int(stats.rate_limit_wait_s * 1000))
        dist = beam.metrics.Metrics.distribution("tierembed", f"api_latency_ms.{version}")
        for latency in stats.latencies_s:
            dist.update(int(latency * 1000))


def cost_usd_float(billed_tokens: float, price: Price) -> float:
    return float(billed_tokens) * float(price.per_token)


def _api_units(routed: RoutedDocument) -> int:
    return max(1, routed.scored.est_tokens // 500)


class EmbedApi(beam.PTransform):  # type: ignore[misc]
    def __init__(self, branch: ApiBranch, max_batch_docs: int = 2048) -> None:
        super().__init__()
        self.branch = branch
        self.max_batch_docs = max_batch_docs

    def expand(self, docs: beam.PCollection[RoutedDocument]) -> dict[str, beam.PCollection]:
        out = (
            docs
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.max_batch_docs,
                                            element_size_fn=_api_units)
            | "Embed" >> beam.ParDo(_ApiEmbedFn(self.branch)).with_outputs(
                DEAD_LETTERS, FALLBACK, main="embedded"
            )
        )
        return {"embedded": out.embedded, FALLBACK: out[FALLBACK], DEAD_LETTERS: out[DEAD_LETTERS]}
