"""The local tier's hot loop: documents in, document vectors out, through length buckets.

No Beam here (``EmbedLocal`` wraps it; a benchmark can drive it alone). Documents are
admitted a group at a time (``admit`` documents: one batched tokenizer call), cut into
chunks with real token counts (``LocalModel.chunk_many``), and each chunk joins the open
batch of its length bucket (``tiering.buckets``). A bucket that reaches ``batch_size``
chunks goes to the model as one call of similar lengths (little padding, few distinct
shapes); a document is finished as soon as its last chunk is embedded, its vector the
renormalized mean of its chunk vectors. ``flush`` embeds whatever still waits. Memory is
bounded by the buckets, never by the corpus.

A failing model call is retried chunk by chunk once to find the bad input (local failures
are deterministic, so this isolates rather than retries); the document of a failing chunk
is reported failed once, and none of its other chunks is used.
"""

from __future__ import annotations

import traceback
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from tiering.buckets import LengthBuckets, bucket_width
from tiering.chunking import aggregate_vectors

__all__ = ["LocalModel", "Finished", "Failed", "BucketedEncoder"]

K = TypeVar("K", bound=Hashable)


class LocalModel(Protocol):
    """What the loop needs from a model (``local_embedder.LoadedLocalModel`` is one)."""

    max_tokens: int
    batch_size: int  # chunks per model call (``local.batch_size``, resolved per device)

    def chunk_many(self, texts: Sequence[str]) -> list[list[tuple[str, int]]]: ...

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True, slots=True)
class Finished(Generic[K]):
    key: K
    vector: npt.NDArray[np.float32]
    n_chunks: int


@dataclass(frozen=True, slots=True)
class Failed(Generic[K]):
    key: K
    error: BaseException
    traceback: str


@dataclass
class _Doc(Generic[K]):
    key: K
    texts: list[str]
    vectors: list[npt.NDArray[np.float32] | None] = field(default_factory=list)
    left: int = 0


Result = Finished[K] | Failed[K]


class BucketedEncoder(Generic[K]):
    """Feed ``add(key, text)``; collect results from ``add`` and finally ``flush``."""

    def __init__(self, model: LocalModel, batch_size: int, admit: int = 64) -> None:
        self._model = model
        self._admit = admit
        self._waiting: list[tuple[K, str]] = []
        self._docs: dict[int, _Doc[K]] = {}
        self._chunk_of: dict[int, tuple[int, int]] = {}  # chunk id -> (doc id, chunk index)
        self._next = 0
        self._buckets: LengthBuckets[int] = LengthBuckets(batch_size, bucket_width(model.max_tokens))

    def add(self, key: K, text: str) -> list[Result[K]]:
        self._waiting.append((key, text))
        return self._admit_waiting() if len(self._waiting) >= self._admit else []

    def flush(self) -> list[Result[K]]:
        out = self._admit_waiting()
        for batch in self._buckets.drain():
            out += self._run(batch)
        if self._docs:  # a bug, never a silent loss
            raise RuntimeError(f"{len(self._docs)} documents were left unfinished")
        return out

    @property
    def pending(self) -> int:
        """Documents admitted or waiting whose vectors are not out yet."""
        return len(self._docs) + len(self._waiting)

    # -- admission: chunk and bucket ------------------------------------------------------

    def _admit_waiting(self) -> list[Result[K]]:
        docs, self._waiting = self._waiting, []
        out: list[Result[K]] = []
        for (key, _), chunks in zip(docs, self._chunk(docs, out), strict=True):
            if chunks:
                out += self._bucket(key, chunks)
        return out

    def _chunk(self, docs: list[tuple[K, str]], out: list[Result[K]]) -> list[list[tuple[str, int]]]:
        try:
            return self._model.chunk_many([text for _, text in docs])
        except Exception:  # noqa: BLE001 - find the document the tokenizer cannot take
            chunked: list[list[tuple[str, int]]] = []
            for key, text in docs:
                try:
                    chunked += self._model.chunk_many([text])
                except Exception as exc:  # noqa: BLE001
                    chunked.append([])
                    out.append(Failed(key, exc, traceback.format_exc(limit=3)[-2000:]))
            return chunked

    def _bucket(self, key: K, chunks: list[tuple[str, int]]) -> list[Result[K]]:
        doc_id = self._new_id()
        self._docs[doc_id] = _Doc(key, [c for c, _ in chunks], [None] * len(chunks), len(chunks))
        out: list[Result[K]] = []
        for index, (_, n_tokens) in enumerate(chunks):
            chunk_id = self._new_id()
            self._chunk_of[chunk_id] = (doc_id, index)
            full = self._buckets.add(chunk_id, n_tokens)
            if full is not None:
                out += self._run(full)
        return out

    def _new_id(self) -> int:
        self._next += 1
        return self._next

    # -- the model call -------------------------------------------------------------------

    def _run(self, batch: list[int]) -> list[Result[K]]:
        """Embed one batch of chunks; the documents it finished or failed."""
        places = [self._chunk_of.pop(c) for c in batch]
        live = [(d, i) for d, i in places if d in self._docs]  # drop chunks of failed documents
        texts = [self._docs[d].texts[i] for d, i in live]
        out: list[Result[K]] = []
        try:
            vectors: list[npt.NDArray[np.float32] | None] = list(self._encode(texts))
        except Exception:  # noqa: BLE001 - isolate the failing chunk, then fail its document
            vectors = [self._encode_one(d, t, out) for (d, _), t in zip(live, texts, strict=True)]
        for (doc_id, index), vector in zip(live, vectors, strict=True):
            doc = self._docs.get(doc_id)
            if doc is None or vector is None:
                continue
            doc.vectors[index] = vector
            doc.left -= 1
            if doc.left == 0:
                del self._docs[doc_id]
                out.append(Finished(doc.key, aggregate_vectors(np.stack(doc.vectors)), len(doc.vectors)))
        return out

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        vectors = self._model.encode(texts)
        if len(vectors) != len(texts):
            raise RuntimeError(f"the model returned {len(vectors)} vectors for {len(texts)} inputs")
        return vectors

    def _encode_one(self, doc_id: int, text: str, out: list[Result[K]]) -> npt.NDArray[np.float32] | None:
        if doc_id not in self._docs:  # an earlier chunk of this document failed
            return None
        try:
            return self._encode([text])[0]
        except Exception as exc:  # noqa: BLE001
            doc = self._docs.pop(doc_id)
            out.append(Failed(doc.key, exc, traceback.format_exc(limit=3)[-2000:]))
            return None

