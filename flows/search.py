"""Searching the store across model versions, with calibrated fusion by default.

Vectors from two models live in different spaces, so their cosine scores are not
comparable. The query is embedded with each model version present in the store (the
models stay loaded for every query of the process), each version is searched in its own
space for ``search.candidates`` documents, the exact score of every candidate is read from
every version holding it, and the results are fused (:mod:`tiering.fusion`): by default
each version's scores become z-scores against that version's scores on a calibration
reference sample of the corpus (:mod:`store.reference`), and a document's fused score is
the mean over the versions that embedded it. ``search.fusion: rrf`` gives reciprocal-rank
fusion instead; ``platt`` maps z-scores through curves fitted on labelled queries.

Query embeddings through a paid API go through the pipeline's API client and are recorded
in the spend ledger (a ledger run of kind ``search``), as are reference-sample documents an
API version has to embed once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flows.embedders import TierEmbedders, open_embedders
from flows.endpoint import settings_for_endpoint
from store.reference import ReferenceSample, load_reference, reference_path, save_reference
from store.registry import open_registry
from store.vector_cache import VectorCache, doc_key
from store.vector_reader import StoredDoc, VectorReader, open_reader
from tiering.errors import ConfigError
from tiering.evaluation import reference_indices
from tiering.fusion import FusionMethod, PlattCurve, VersionResult, fuse, zscore_calibration
from tiering.prune import superseded
from tiering.settings import TierembedSettings

if TYPE_CHECKING:
    from beam_pipeline.sinks.hits import SearchHit

__all__ = ["SearchResult", "Searcher", "open_searcher", "open_store", "search_store", "load_platt",
           "save_platt"]

_log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """One fused hit: ``fused`` is the calibrated (or RRF) score; per version the raw
    cosine, the calibrated score and the rank in that version's own search."""

    id: str
    fused: float
    text: str
    method: str
    scores: dict[str, float] = field(default_factory=dict)
    calibrated: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)


def load_platt(path: str | Path) -> dict[str, PlattCurve]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {v: PlattCurve(float(c["a"]), float(c["b"])) for v, c in data["curves"].items()}


def save_platt(path: str | Path, curves: dict[str, PlattCurve], provenance: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"format": "tierembed.platt/v1", "provenance": provenance,
                                      "curves": {v: {"a": c.a, "b": c.b} for v, c in curves.items()}},
                                     indent=2) + "\n", encoding="utf-8")


class Searcher:
    """Search over one store with models, reference samples and store handle kept between
    queries. Build with :func:`open_searcher`."""

    def __init__(self, settings: TierembedSettings, store: VectorReader, embedders: TierEmbedders,
                 *, method: FusionMethod | None = None, only_version: str | None = None,
                 served: Collection[str] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.embedders = embedders
        self.method = FusionMethod(method or settings.search.fusion)
        configured = [m.version for m in settings.local.models] + [m.version for m in settings.api.models]
        self.counts = {v: store.count(v) for v in configured}
        present = [v for v in configured if self.counts[v] > 0]
        if served is not None and not only_version:
            # the registry's live versions only: shadow, candidate and retired ones are never
            # served (an explicit --version may still name one, e.g. to inspect a shadow)
            present = [v for v in present if v in served]
        if only_version:
            if only_version not in present:
                raise ConfigError(f"model version {only_version!r} is not in the store; present: {present}")
            present = [only_version]
        self.versions = present
        self.platt = load_platt(settings.search.platt_path) if settings.search.platt_path else None
        if self.method is FusionMethod.PLATT and not self.platt:
            raise ConfigError("search.fusion is 'platt' but search.platt_path is unset; fit curves with "
                              "`tierembed eval --fit-platt PATH` and set search.platt_path: PATH")
        self._references: dict[str, np.ndarray] = {}
        self.vector_cache: VectorCache | None = None
        """Vectors embedded outside the store (eval's cache): reused for the reference sample."""

    # -- calibration reference ------------------------------------------------------------
    def _sample_ids(self) -> list[str]:
        ids: set[str] = set()
        for v in self.versions:
            ids.update(self._all_ids(v))
        ordered = sorted(ids)
        picked = reference_indices(ordered, self.settings.search.reference_size)
        return [ordered[i] for i in picked]

    def _all_ids(self, version: str) -> list[str]:
        return self.store.ids(version)

    def reference(self, version: str) -> np.ndarray:
        """The version's reference vectors, loaded, or (re)built when the store changed."""
        if version in self._references:
            return self._references[version]
        s = self.settings
        path = reference_path(s.search.calibration_dir, self._prefix(), version)
        saved = load_reference(path, version)
        if saved is None or saved.counts != self.counts:
            saved = self._build_reference(version, saved)
            save_reference(path, saved)
        self._references[version] = saved.vectors
        return saved.vectors

    def _prefix(self) -> str:
        s = self.settings.sink
        return s.lancedb.table_prefix if s.kind == "lancedb" else s.weaviate.collection

    def _build_reference(self, version: str, old: ReferenceSample | None) -> ReferenceSample:
        ids = self._sample_ids()
        held = self.store.fetch(version, ids)
        texts: dict[str, StoredDoc] = dict(held)
        for other in self.versions:
            missing = [i for i in ids if i not in texts]
            if not missing:
                break
            texts.update(self.store.fetch(other, missing))
        reuse = old.by_key() if old is not None else {}
        vectors: dict[str, np.ndarray] = {i: d.vector for i, d in held.items()}
        for i in ids:
            if i not in vectors and (i, texts[i].content_hash) in reuse:
                vectors[i] = reuse[(i, texts[i].content_hash)]
        if self.vector_cache is not None:
            for i in ids:
                cached = self.vector_cache.get(version, doc_key(texts[i].content_hash))
                if i not in vectors and cached is not None:
                    vectors[i] = cached
        todo = [i for i in ids if i not in vectors]
        if todo:
            embedder = self.embedders[version]
            _log.info("calibration: embedding %d reference documents with %s (estimated $%.6f)",
                      len(todo), version, embedder.estimate_usd([texts[i].text for i in todo]))
            new = embedder.embed_documents([texts[i].text for i in todo])
            vectors.update(zip(todo, new, strict=True))
        matrix = np.vstack([vectors[i] for i in ids]).astype(np.float32)
        return ReferenceSample(version, tuple(ids), tuple(texts[i].content_hash for i in ids), matrix,
                               dict(self.counts))

    # -- search ---------------------------------------------------------------------------
    def _query_vectors(self, query: str) -> dict[str, np.ndarray]:
        return {v: self.embedders[v].embed_queries([query])[0] for v in self.versions}

    def search(self, query: str, k: int = 5) -> list[SearchResult]:
        """The ``k`` best documents for ``query`` over every version present, fused."""
        if not self.versions:
            return []
        qv = self._query_vectors(query)
        depth = max(self.settings.search.candidates, k)
        hits = {v: self.store.search(v, qv[v].tolist(), depth) for v in self.versions}
        stale = self._superseded(hits)
        hits = {v: [h for h in hs if (v, h.id) not in stale] for v, hs in hits.items()}
        texts = {h.id: h.text for hs in hits.values() for h in hs}
        candidates = set(texts)
        results = []
        for v in self.versions:
            scores = {h.id: float(h.score) for h in hits[v]}
            missing = candidates - set(scores)
            if missing and self.method is not FusionMethod.RRF:
                for doc_id, doc in self.store.fetch(v, missing - {i for w, i in stale if w == v}).items():
                    scores[doc_id] = float(doc.vector @ qv[v])
            calibration = (zscore_calibration(qv[v], self.reference(v))
                           if self.method is not FusionMethod.RRF else None)
            ranks = {h.id: r for r, h in enumerate(hits[v], start=1)}
            results.append(VersionResult(v, scores, calibration, ranks))
        fused = fuse(results, self.method, platt=self.platt)[:k]
        return [SearchResult(h.id, round(h.fused, 6), texts.get(h.id, ""), self.method.value,
                             {v: round(x, 4) for v, x in h.scores.items()},
                             {v: round(x, 4) for v, x in h.calibrated.items()}, dict(h.ranks))
                for h in fused]

    def _superseded(self, hits: dict[str, list[SearchHit]]) -> set[tuple[str, str]]:
        """(version, id) pairs never returned: another served version holds the document
        embedded from different text, later - it changed and moved there (see
        :func:`tiering.prune.superseded`); hidden even before ``tierembed prune`` removes them."""
        if len(self.versions) < 2:
            return set()
        ids = {h.id for hs in hits.values() for h in hs}
        return superseded({v: self.store.stamps(v, ids) for v in self.versions})

    def search_many(self, queries: Sequence[str], k: int = 5) -> list[list[SearchResult]]:
        return [self.search(q, k) for q in queries]


@contextmanager
def open_store(settings: TierembedSettings) -> Iterator[VectorReader]:
    """The configured store, read-only, closed on exit."""
    store = open_reader(settings)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def open_searcher(settings: TierembedSettings, *, method: FusionMethod | str | None = None,
                  only_version: str | None = None, kind: str = "search") -> Iterator[Searcher]:
    """A :class:`Searcher` over the configured store, its models loaded once; the API
    endpoint (a stand-in server too) is opened only when an API version is in the store.
    ``kind`` names the ledger run paid embeddings are recorded under."""
    settings = settings_for_endpoint(settings)  # same version names as the run used
    _, registry = open_registry(settings, by=kind)
    served = set(registry.served())
    store = open_reader(settings)
    try:
        api_versions = {m.version for m in settings.api.models}
        wanted = {only_version} if only_version else served
        need_api = any(store.count(v) > 0 for v in api_versions & wanted)
        with open_embedders(settings, kind, need_api=need_api) as embedders:
            yield Searcher(settings, store, embedders, method=FusionMethod(method) if method else None,
                           only_version=only_version, served=served)
    finally:
        store.close()


def search_store(settings: TierembedSettings, query: str, *, k: int = 5, only_version: str | None = None,
                 method: FusionMethod | str | None = None) -> list[SearchResult]:
    """Search every model version present in the configured store (LanceDB or Weaviate)."""
    with open_searcher(settings, method=method, only_version=only_version) as searcher:
        return searcher.search(query, k)
