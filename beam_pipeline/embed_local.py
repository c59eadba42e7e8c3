"""EmbedLocal: the local tier as a Beam stage (sentence-transformers, CUDA when present).

What the model does lives in ``local_embedder`` (loading, precision per device, chunking
by the real tokenizer) and ``local_batches`` (the hot loop: length-bucketed chunk batches,
documents reassembled from their chunks); this module is how Beam runs it.

The model is loaded once per worker process and shared by every DoFn instance there
(``apache_beam.utils.shared.Shared``), when the first document arrives: never at graph
construction, and not at all in a run where nothing goes to the local tier (a re-run over
unchanged input). Documents arrive one by one (no ``BatchElements``: the buckets batch
chunks of similar length, across documents); a document leaves as soon as its last chunk is
embedded, and ``finish_bundle`` embeds what is still waiting. A document whose chunk the
model cannot embed becomes one dead letter (see ``local_batches``); no retries: local
failures are deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.utils import shared

from beam_pipeline.local_batches import BucketedEncoder, Failed, Finished
from beam_pipeline.local_embedder import LoadedLocalModel, LocalModelSpec, load_local_model
from beam_pipeline.records import doc_payload, make_embedded
from beam_pipeline.sinks.bundles import in_global_window
from beam_pipeline.tagged import TaggedOutputsTransform
from beam_pipeline.validate import DEAD_LETTERS
from tiering.documents import DeadLetter, EmbeddedDocument, RoutedDocument, Tier

__all__ = ["EmbedLocal"]

_log = logging.getLogger(__name__)
_SHARED_MODELS = shared.Shared()
STAGE = "embed"


class _Counters:
    def __init__(self, version: str) -> None:
        c = beam.metrics.Metrics.counter
        self.embedded = c("tierembed", f"embedded.local.{version}")
        self.chunks = c("tierembed", f"chunks.local.{version}")
        self.tokens = c("tierembed", f"est_tokens.local.{version}")
        self.chunked = c("tierembed", f"chunked.local.{version}")
        self.dead = c("tierembed", "dead_letters.embed")


@beam.typehints.with_input_types(RoutedDocument)
@beam.typehints.with_output_types(EmbeddedDocument, dead_letters=DeadLetter)
class _LocalEmbedFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, spec: LocalModelSpec, version: str) -> None:
        self._spec = spec
        self._version = version
        self._model: LoadedLocalModel | None = None
        self._encoder: BucketedEncoder[int] | None = None
        self._routed: dict[int, RoutedDocument] = {}
        self._next = 0

    def setup(self) -> None:
        self._counters = _Counters(self._version)

    def _loaded(self) -> LoadedLocalModel:
        if self._model is None:
            # the whole spec: two versions of one model with other limits must not share a load
            self._model = _SHARED_MODELS.acquire(lambda: load_local_model(self._spec), tag=repr(self._spec))
        return self._model

    def start_bundle(self) -> None:
        self._encoder, self._routed, self._next = None, {}, 0

    def process(self, routed: RoutedDocument) -> Iterator[object]:
        if self._encoder is None:
            model = self._loaded()
            self._encoder = BucketedEncoder(model, model.batch_size)  # local.batch_size resolved per device
        self._next += 1
        self._routed[self._next] = routed
        yield from self._emit(self._encoder.add(self._next, routed.scored.document.text))

    def finish_bundle(self) -> Iterator[object]:
        if self._encoder is None:
            return
        for item in self._emit(self._encoder.flush()):
            yield in_global_window(item)

    def _emit(self, results: list[Finished[int] | Failed[int]]) -> Iterator[object]:
        for result in results:
            routed = self._routed.pop(result.key)
            if isinstance(result, Failed):
                yield pvalue.TaggedOutput(DEAD_LETTERS, self._dead(routed, result))
                continue
            embedded = make_embedded(routed, self._spec.model, result.vector, result.n_chunks)
            c = self._counters
            c.embedded.inc()
            c.chunks.inc(embedded.n_chunks)
            c.tokens.inc(embedded.est_tokens)
            if embedded.n_chunks > 1:
                c.chunked.inc()
            yield embedded

    def _dead(self, routed: RoutedDocument, failed: Failed[int]) -> DeadLetter:
        exc = failed.error
        _log.warning("local embedding failed for %s: %s", routed.id, exc)
        self._counters.dead.inc()
        doc = routed.scored.document
        return DeadLetter(
            stage=STAGE,
            error_type=type(exc).__name__,
            message=f"document {doc.id!r}: local model {self._version} failed: {exc}; "
            "sent to the dead-letter output, replay with `tierembed replay`",
            retryable=False,
            doc_id=doc.id,
            source=doc.source,
            payload=doc_payload(routed),
            tier=Tier.LOCAL.value,
            model_version=self._version,
            extra=(("traceback", failed.traceback),),
        )


class EmbedLocal(TaggedOutputsTransform):
    """RoutedDocuments -> EmbeddedDocuments (main) and dead letters."""

    def __init__(self, spec: LocalModelSpec, version: str) -> None:
        super().__init__()
        self.spec = spec
        self.version = version

    def expand(self, docs: beam.PCollection[RoutedDocument]) -> dict[str, beam.PCollection]:
        out = docs | "Embed" >> beam.ParDo(_LocalEmbedFn(self.spec, self.version)).with_outputs(
            DEAD_LETTERS, main="embedded"
        )
        return {"embedded": out.embedded, DEAD_LETTERS: out[DEAD_LETTERS]}
