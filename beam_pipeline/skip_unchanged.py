"""SkipUnchanged: a join inside the pipeline between the run's documents and the store.

``ReadStoredHashes`` reads the store's (document id, model version, content hash) rows as a
PCollection (``store.stored_hashes``: LanceDB streams each version's table, Weaviate pages
through the collection), and ``SkipUnchanged`` joins them with the scored documents by
document id (``CoGroupByKey``). Each document leaves with the model versions that already
hold its current text (``ScoredDocument.unchanged``); planning and routing then drop those
targets, so an unchanged document costs nothing. Stored rows of documents not in this
run's input are dropped by the join.

Nothing is gathered on the launching machine and nothing is broadcast as a side input: the
join is a shuffle, which distributed runners (Dataflow, Flink, Spark) spill to disk, so
the memory of each worker stays flat as the store grows. (The in-process FnApiRunner keeps
shuffled data in memory: the run's documents, as it does for the duplicate-id check.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import apache_beam as beam

from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig
from beam_pipeline.sinks.weaviate_sink import WeaviateSinkConfig, WeaviateStore
from store.stored_hashes import StoredHash, lancedb_hash_pages
from tiering.documents import ScoredDocument

__all__ = ["ReadStoredHashes", "SkipUnchanged", "StoredHash"]

_ALL_VERSIONS = "*"  # Weaviate keeps every version in one collection: one scan reads them all


@beam.typehints.with_input_types(str)
@beam.typehints.with_output_types(StoredHash)
class _ReadStoredHashesFn(beam.DoFn):  # type: ignore[misc]
    """One read unit (a LanceDB version table, or the whole Weaviate collection) -> rows."""

    def __init__(self, config: LanceDBSinkConfig | WeaviateSinkConfig, versions: tuple[str, ...]) -> None:
        self._config = config
        self._versions = versions

    def process(self, unit: str) -> Iterator[StoredHash]:
        rows = beam.metrics.Metrics.counter("tierembed", "stored_hashes_read")
        for page in self._pages(unit):
            rows.inc(len(page))
            yield from page

    def _pages(self, unit: str) -> Iterator[list[StoredHash]]:
        cfg = self._config
        if isinstance(cfg, LanceDBSinkConfig):
            yield from lancedb_hash_pages(cfg.uri, cfg.table_name(unit), unit)
            return
        with WeaviateStore(cfg) as store:
            yield from store.stored_hash_pages(self._versions)


class ReadStoredHashes(beam.PTransform):  # type: ignore[misc]
    """PBegin -> the store's StoredHash rows for ``versions``."""

    def __init__(self, config: LanceDBSinkConfig | WeaviateSinkConfig, versions: Sequence[str]) -> None:
        super().__init__()
        self.config = config
        self.versions = tuple(versions)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[StoredHash]:
        units = list(self.versions) if isinstance(self.config, LanceDBSinkConfig) else [_ALL_VERSIONS]
        return (
            pbegin
            | "ReadUnits" >> beam.Create(units).with_output_types(str)
            | "Reshuffle" >> beam.Reshuffle()  # one worker per unit on a distributed runner
            | "ReadRows" >> beam.ParDo(_ReadStoredHashesFn(self.config, self.versions))
        )


@beam.typehints.with_input_types(tuple[str, tuple[Iterable[ScoredDocument], Iterable[StoredHash]]])
@beam.typehints.with_output_types(ScoredDocument)
class _MarkUnchangedFn(beam.DoFn):  # type: ignore[misc]
    def process(
        self, element: tuple[str, tuple[Iterable[ScoredDocument], Iterable[StoredHash]]]
    ) -> Iterator[ScoredDocument]:
        _, (docs, stored) = element
        docs = list(docs)
        if not docs:  # stored, but not in this run's input
            return
        rows = list(stored)
        for scored in docs:  # one per id after validation; every one passes through
            text_hash = scored.document.hash
            unchanged = tuple(sorted({r.model_version for r in rows if r.content_hash == text_hash}))
            yield replace(scored, unchanged=unchanged) if unchanged else scored


def _doc_key(scored: ScoredDocument) -> tuple[str, ScoredDocument]:
    return scored.document.id, scored


def _row_key(row: StoredHash) -> tuple[str, StoredHash]:
    return row.doc_id, row


class SkipUnchanged(beam.PTransform):  # type: ignore[misc]
    """Scored documents -> the same documents, each with the versions already holding it."""

    def __init__(self, stored: beam.PCollection[StoredHash]) -> None:
        super().__init__()
        self.stored = stored

    def expand(self, scored: beam.PCollection[ScoredDocument]) -> beam.PCollection[ScoredDocument]:
        docs = scored | "KeyDocuments" >> beam.Map(_doc_key).with_output_types(tuple[str, ScoredDocument])
        rows = self.stored | "KeyStored" >> beam.Map(_row_key).with_output_types(tuple[str, StoredHash])
        return (
            (docs, rows)
            | "JoinById" >> beam.CoGroupByKey()
            | "MarkUnchanged" >> beam.ParDo(_MarkUnchangedFn())
        )
