"""EmbedLocal: the local tier as a Beam stage (sentence-transformers, CUDA when present).

The model is loaded once per worker process and shared by every DoFn instance there
(``apache_beam.utils.shared.Shared``), in ``setup`` (never at graph construction). Documents
arrive in batches from ``BatchElements`` sized by their estimated chunk count; all chunks of
a batch go through the model together and are re-assembled per document.
A failing batch is retried document by document once to isolate the bad one (not a retry
of a transient fault: local failures are deterministic); failures become dead letters.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator, Sequence

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.utils import shared

from beam_pipeline.local_embedder import LoadedLocalModel, LocalModelSpec, load_local_model
from beam_pipeline.records import doc_payload, make_embedded
from beam_pipeline.tagged import TaggedOutputsTransform
from beam_pipeline.validate import DEAD_LETTERS
from tiering.chunking import aggregate_vectors
from tiering.documents import DeadLetter, EmbeddedDocument, RoutedDocument, Tier

__all__ = ["EmbedLocal"]

_log = logging.getLogger(__name__)
_SHARED_MODELS = shared.Shared()
STAGE = "embed"


@beam.typehints.with_input_types(Sequence[RoutedDocument])
@beam.typehints.with_output_types(EmbeddedDocument, dead_letters=DeadLetter)
class _LocalEmbedFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, spec: LocalModelSpec, version: str) -> None:
        self._spec = spec
        self._version = version
        self._model: LoadedLocalModel | None = None

    def setup(self) -> None:
        # the whole spec: two versions of one model with other limits must not share a load
        tag = repr(self._spec)
        self._model = _SHARED_MODELS.acquire(lambda: load_local_model(self._spec), tag=tag)

    def process(self, batch: Sequence[RoutedDocument]) -> Iterator[object]:
        try:
            embedded = self._embed(batch)
        except Exception:  # noqa: BLE001 - isolate the failing document, then dead-letter it
            if len(batch) == 1:
                yield pvalue.TaggedOutput(DEAD_LETTERS, self._dead(batch[0]))
                return
            for routed in batch:
                try:
                    embedded = self._embed([routed])
                except Exception:  # noqa: BLE001
                    yield pvalue.TaggedOutput(DEAD_LETTERS, self._dead(routed))
                    continue
                yield from self._count(embedded)
            return
        yield from self._count(embedded)

    def _embed(self, batch: Sequence[RoutedDocument]) -> list[EmbeddedDocument]:
        """All of the batch or an exception: nothing leaves before the whole batch is done,
        so the per-document retry after a failure never emits a document twice."""
        assert self._model is not None
        per_doc = [self._model.chunk(r.scored.document.text) for r in batch]
        flat = [c for chunks in per_doc for c in chunks]
        vectors = self._model.encode(flat)
        out = []
        start = 0
        for routed, chunks in zip(batch, per_doc, strict=True):
            doc_vecs = vectors[start : start + len(chunks)]
            start += len(chunks)
            out.append(make_embedded(routed, self._spec.model, aggregate_vectors(doc_vecs), len(chunks)))
        return out

    def _count(self, embedded: list[EmbeddedDocument]) -> list[EmbeddedDocument]:
        counter = beam.metrics.Metrics.counter
        for doc in embedded:
            counter("tierembed", f"embedded.local.{self._version}").inc()
            counter("tierembed", f"chunks.local.{self._version}").inc(doc.n_chunks)
            counter("tierembed", f"est_tokens.local.{self._version}").inc(doc.est_tokens)
            if doc.n_chunks > 1:
                counter("tierembed", f"chunked.local.{self._version}").inc()
        return embedded

    def _dead(self, routed: RoutedDocument) -> DeadLetter:
        exc = sys.exc_info()[1]
        _log.warning("local embedding failed for %s: %s", routed.id, exc)
        beam.metrics.Metrics.counter("tierembed", "dead_letters.embed").inc()
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
            extra=(("traceback", traceback.format_exc(limit=3)[-2000:]),),
        )


def _chunk_units(routed: RoutedDocument) -> int:
    return max(1, routed.scored.est_tokens // 200)


class EmbedLocal(TaggedOutputsTransform):
    """RoutedDocuments -> EmbeddedDocuments (main) and dead letters."""

    def __init__(self, spec: LocalModelSpec, version: str, min_batch: int, max_batch: int) -> None:
        super().__init__()
        self.spec = spec
        self.version = version
        self.min_batch = min_batch
        self.max_batch = max_batch

    def expand(self, docs: beam.PCollection[RoutedDocument]) -> dict[str, beam.PCollection]:
        out = (
            docs
            | "Batch" >> beam.BatchElements(
                min_batch_size=self.min_batch, max_batch_size=self.max_batch,
                element_size_fn=_chunk_units,
            )
            | "Embed" >> beam.ParDo(_LocalEmbedFn(self.spec, self.version)).with_outputs(
                DEAD_LETTERS, main="embedded"
            )
        )
        return {"embedded": out.embedded, DEAD_LETTERS: out[DEAD_LETTERS]}
