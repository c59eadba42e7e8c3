"""MarkPaidResults: documents whose API vectors were paid for earlier cost nothing now.

A run killed after the API billed some replies keeps those vectors in the result cache
(``store.result_cache``), and the next run takes them from there instead of paying again.
The budget plan must know it too: priced at their estimate, paid-for documents compete
with unpaid ones for the budget and can be deferred or sent to the local tier, so vectors
already paid for are never used while new ones are bought. This step marks each document
whose every chunk, as its API version's embedder would send it, is in the cache
(``ScoredDocument.paid``); planning then prices it at zero (``plan.estimated_api_cost``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

import apache_beam as beam

from beam_pipeline.sinks.bundles import in_global_window
from store.result_cache import CacheKey, ResultCache
from tiering.chunking import chunk_text
from tiering.documents import ScoredDocument
from tiering.routing import RoutingPolicy, api_version_for

__all__ = ["MarkPaidResults", "PaidLookup"]


@dataclass(frozen=True, slots=True)
class PaidLookup:
    """How one API version's embedder sends a document: its cache scope and chunk size."""

    key: CacheKey
    max_tokens_per_input: int


@beam.typehints.with_input_types(ScoredDocument)
@beam.typehints.with_output_types(ScoredDocument)
class _MarkPaidFn(beam.DoFn):  # type: ignore[misc]
    """Looks documents up a batch at a time: one cache connection per batch and version, and
    no chunking at all while the cache holds nothing for the version (a first run)."""

    BATCH = 256

    def __init__(self, cache_path: str, policy: RoutingPolicy, lookups: Mapping[str, PaidLookup]) -> None:
        self._path = cache_path
        self._policy = policy
        self._lookups = dict(lookups)
        self._cache: ResultCache | None = None
        self._waiting: list[tuple[ScoredDocument, str | None]] = []

    def setup(self) -> None:
        self._cache = ResultCache(self._path)

    def start_bundle(self) -> None:
        self._waiting = []

    def process(self, scored: ScoredDocument) -> Iterator[ScoredDocument]:
        version = api_version_for(scored.document.id, self._policy)
        if version is not None and (version in scored.unchanged or version not in self._lookups):
            version = None
        self._waiting.append((scored, version))
        if len(self._waiting) >= self.BATCH:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[object]:
        for scored in self._flush():
            yield in_global_window(scored)

    def _flush(self) -> list[ScoredDocument]:
        assert self._cache is not None
        waiting, self._waiting = self._waiting, []
        paid: dict[int, str] = {}  # position in waiting -> version paid for
        for version in {v for _, v in waiting if v is not None}:
            lookup = self._lookups[version]
            if not self._cache.has_any(lookup.key):  # nothing paid earlier: nothing to chunk
                continue
            mine = [i for i, (_, v) in enumerate(waiting) if v == version]
            chunks = [chunk_text(waiting[i][0].document.text, lookup.max_tokens_per_input) for i in mine]
            for i, held in zip(mine, self._cache.holds_all(lookup.key, chunks), strict=True):
                if held:
                    paid[i] = version
                    beam.metrics.Metrics.counter("tierembed", f"paid_earlier.api.{version}").inc()
        return [replace(scored, paid=(*scored.paid, paid[i])) if i in paid else scored
                for i, (scored, _) in enumerate(waiting)]


class MarkPaidResults(beam.PTransform):  # type: ignore[misc]
    """ScoredDocument -> the same, with ``paid`` naming the API version whose vectors the
    result cache holds for every chunk of the document."""

    def __init__(self, cache_path: str, policy: RoutingPolicy, lookups: Mapping[str, PaidLookup]) -> None:
        super().__init__()
        self.cache_path = cache_path
        self.policy = policy
        self.lookups = dict(lookups)

    def expand(self, scored: beam.PCollection[ScoredDocument]) -> beam.PCollection[ScoredDocument]:
        return scored | "Mark" >> beam.ParDo(_MarkPaidFn(self.cache_path, self.policy, self.lookups))
