"""EmbedLocal: the local tier as a Beam stage (sentence-transformers, CUDA when present).

The model is loaded once per worker process and shared by every DoFn instance there
(``apache_beam.utils.shared.Shared``), when the first document arrives (never at graph
construction, and not at all in a run where nothing goes to the local tier, e.g. a re-run
over unchanged input).

The hot loop works on chunks, not documents: documents are admitted a group at a time
(``_ADMIT_DOCS``), cut into chunks whose real token counts come from one batched tokenizer
call, and each chunk joins the open batch of its length bucket (``tiering.buckets``). A
bucket that reaches ``local.batch_size`` chunks goes to the model as one batch of similar
lengths (little padding, few distinct shapes); a document leaves as soon as its last chunk
is embedded. ``finish_bundle`` embeds what is still waiting. Memory is bounded by the
buckets, never by the corpus.

A failing batch is retried chunk by chunk once to isolate the bad input (not a retry of a
transient fault: local failures are deterministic); the document of a failing chunk becomes
a dead letter, once, and none of its chunks is emitted.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import numpy.typing as npt
from apache_beam import pvalue
from apache_beam.utils import shared

from beam_pipeline.local_embedder import LoadedLocalModel, LocalModelSpec, load_local_model
from beam_pipeline.records import doc_payload, make_embedded
from beam_pipeline.sinks.bundles import in_global_window
from beam_pipeline.tagged import TaggedOutputsTransform
from beam_pipeline.validate import DEAD_LETTERS
from tiering.buckets import LengthBuckets, bucket_width
from tiering.chunking import aggregate_vectors
from tiering.documents import DeadLetter, EmbeddedDocument, RoutedDocument, Tier

__all__ = ["EmbedLocal"]

_log = logging.getLogger(__name__)
_SHARED_MODELS = shared.Shared()
STAGE = "embed"
_ADMIT_DOCS = 64  # documents tokenized together: one tokenizer call, not one per document


@dataclass
class _InFlight:
    """A document whose chunks are in the buckets; vectors fill in as batches finish."""

    routed: RoutedDocument
    texts: list[str]
    vectors: list[npt.NDArray[np.float32] | None] = field(default_factory=list)
    left: int = 0


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
        self._init_bundle()

    def _init_bundle(self) -> None:
        self._admit: list[RoutedDocument] = []
        self._docs: dict[int, _InFlight] = {}
        self._chunk_of: dict[int, tuple[int, int]] = {}  # chunk key -> (doc key, chunk index)
        self._next = 0
        self._buckets: LengthBuckets[int] | None = None

    def setup(self) -> None:
        self._counters = _Counters(self._version)

    def _loaded(self) -> LoadedLocalModel:
        if self._model is None:
            # the whole spec: two versions of one model with other limits must not share a load
            self._model = _SHARED_MODELS.acquire(lambda: load_local_model(self._spec), tag=repr(self._spec))
        return self._model

    def start_bundle(self) -> None:
        self._init_bundle()

    def process(self, routed: RoutedDocument) -> Iterator[object]:
        self._admit.append(routed)
        if len(self._admit) >= _ADMIT_DOCS:
            yield from self._admit_waiting()

    def finish_bundle(self) -> Iterator[object]:
        out = list(self._admit_waiting())
        if self._buckets is not None:
            for batch in self._buckets.drain():
                out += self._run(batch)
        assert not self._docs, f"{len(self._docs)} documents left unfinished"
        for item in out:
            yield in_global_window(item)

    # -- admission: chunk and bucket ------------------------------------------------------

    def _admit_waiting(self) -> Iterator[object]:
        docs, self._admit = self._admit, []
        if not docs:
            return
        model = self._loaded()
        if self._buckets is None:
            self._buckets = LengthBuckets(self._spec.batch_size, bucket_width(model.max_tokens))
        try:
            chunked = model.chunk_many([r.scored.document.text for r in docs])
        except Exception:  # noqa: BLE001 - find the document the tokenizer cannot take
            chunked = []
            for routed in docs:
                try:
                    chunked += model.chunk_many([routed.scored.document.text])
                except Exception:  # noqa: BLE001
                    chunked.append([])
                    yield self._dead(routed)
        for routed, chunks in zip(docs, chunked, strict=True):
            if chunks:
                yield from self._bucket(routed, chunks)

    def _bucket(self, routed: RoutedDocument, chunks: list[tuple[str, int]]) -> Iterator[object]:
        assert self._buckets is not None
        key = self._next
        self._next += 1
        self._docs[key] = _InFlight(routed, [c for c, _ in chunks], [None] * len(chunks), len(chunks))
        for index, (_, n_tokens) in enumerate(chunks):
            chunk_key = self._next
            self._next += 1
            self._chunk_of[chunk_key] = (key, index)
            full = self._buckets.add(chunk_key, n_tokens)
            if full is not None:
                yield from self._run(full)

    # -- the model call -------------------------------------------------------------------

    def _run(self, batch: list[int]) -> list[object]:
        """Embed one batch of chunk keys; return the documents it finished (and dead letters)."""
        live = [k for k in batch if self._chunk_of[k][0] in self._docs]
        texts = [self._text(k) for k in live]
        out: list[object] = []
        try:
            vectors: Iterable[npt.NDArray[np.float32] | None] = self._encode(texts)
        except Exception:  # noqa: BLE001 - isolate the failing chunk, then dead-letter its document
            vectors = [self._encode_one(k, t, out) for k, t in zip(live, texts, strict=True)]
        for chunk_key, vector in zip(live, vectors, strict=True):
            doc_key, index = self._chunk_of.pop(chunk_key)
            doc = self._docs.get(doc_key)
            if doc is None or vector is None:
                continue
            doc.vectors[index] = vector
            doc.left -= 1
            if doc.left == 0:
                out.append(self._finish(self._docs.pop(doc_key)))
        for chunk_key in set(batch) - set(live):
            self._chunk_of.pop(chunk_key, None)
        return out

    def _text(self, chunk_key: int) -> str:
        doc_key, index = self._chunk_of[chunk_key]
        return self._docs[doc_key].texts[index]

    def _encode(self, texts: list[str]) -> list[npt.NDArray[np.float32]]:
        vectors = self._loaded().encode(texts)
        if len(vectors) != len(texts):
            raise RuntimeError(f"the model returned {len(vectors)} vectors for {len(texts)} inputs")
        return list(vectors)

    def _encode_one(self, chunk_key: int, text: str, out: list[object]) -> npt.NDArray[np.float32] | None:
        doc_key, _ = self._chunk_of[chunk_key]
        if doc_key not in self._docs:  # an earlier chunk of this document failed
            return None
        try:
            return self._encode([text])[0]
        except Exception:  # noqa: BLE001
            out.append(self._dead(self._docs.pop(doc_key).routed))
            return None

    def _finish(self, doc: _InFlight) -> EmbeddedDocument:
        vectors = doc.vectors
        embedded = make_embedded(doc.routed, self._spec.model, aggregate_vectors(np.stack(vectors)), len(vectors))
        c = self._counters
        c.embedded.inc()
        c.chunks.inc(embedded.n_chunks)
        c.tokens.inc(embedded.est_tokens)
        if embedded.n_chunks > 1:
            c.chunked.inc()
        return embedded

    def _dead(self, routed: RoutedDocument) -> pvalue.TaggedOutput:
        exc = sys.exc_info()[1]
        _log.warning("local embedding failed for %s: %s", routed.id, exc)
        self._counters.dead.inc()
        doc = routed.scored.document
        return pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter(
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
        ))


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
