"""LanceDB: the embedded vector store (the default on a laptop).

Each model version has its own table (``<prefix>__<version>``), because vectors from two
models live in different spaces and must never share a column. Rows are upserted by
document id with ``merge_insert``, so a re-run replaces a document's vector in place. The
writer buffers in ``process`` and flushes when the buffer is full and in ``finish_bundle``;
a failed flush dead-letters each object of that flush with the reason.

The one retry layer on this path is LanceDB's own: ``merge_insert`` re-applies itself after a
concurrent commit conflict (several writers of one table) for up to 30 s after the first
attempt (lancedb 0.40, ``LanceMergeInsertBuilder.execute``). This module does not retry on top
of it: lancedb surfaces a conflict that outlived those retries as a plain ``RuntimeError``
(python/src/error.rs maps every lance error without its own case to RuntimeError), so there is
no exception type to classify by, and the flush is dead-lettered as retryable instead.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam import pvalue

from beam_pipeline.records import document_payload
from beam_pipeline.sinks.bundles import BufferedUpsert, in_global_window
from beam_pipeline.sinks.hits import SearchHit
from beam_pipeline.telemetry import SinkTelemetry, TelemetryContext
from tiering.documents import DeadLetter, EmbeddedDocument
from tiering.prune import StoredRow
from tiering.settings import sanitize_identifier
from tiering.storable import unstorable_reason

__all__ = ["LanceDBSinkConfig", "LanceDBStore", "SearchHit"]

_log = logging.getLogger(__name__)
STAGE = "write"
DELETE_CHUNK = 500  # rows per delete predicate: keeps each SQL filter a few tens of KB


@dataclass(frozen=True, slots=True)
class LanceDBSinkConfig:
    uri: str
    table_prefix: str = "docs"
    batch_size: int = 500
    telemetry: TelemetryContext | None = None  # documents written and run progress

    def table_name(self, model_version: str) -> str:
        return f"{self.table_prefix}__{sanitize_identifier(model_version)}"

    def create_write_transform(self) -> beam.PTransform:
        return BufferedUpsert(_WriteFn(self))


def _schema(dim: int) -> Any:
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
        ("metadata", pa.string()), ("content_hash", pa.string()),
        ("vector", pa.list_(pa.float32(), dim)),
        ("tier", pa.string()), ("model_version", pa.string()), ("model_name", pa.string()),
        ("n_chunks", pa.int32()), ("est_tokens", pa.int64()), ("billed_tokens", pa.float64()),
        ("cost_usd", pa.float64()), ("score", pa.float64()), ("route_reason", pa.string()),
        ("fell_back", pa.bool_()), ("embedded_at", pa.timestamp("us", tz="UTC")),
    ])


def _to_table(docs: list[EmbeddedDocument]) -> Any:
    import pyarrow as pa

    dim = len(docs[0].vector)
    now = datetime.now(UTC)
    cols: dict[str, list[Any]] = defaultdict(list)
    for d in docs:
        cols["id"].append(d.document.id)
        cols["text"].append(d.document.text)
        cols["source"].append(d.document.source)
        cols["metadata"].append(d.document.metadata_json)
        cols["content_hash"].append(d.document.hash)
        cols["vector"].append(list(d.vector))
        cols["tier"].append(d.tier.value)
        cols["model_version"].append(d.model_version)
        cols["model_name"].append(d.model_name)
        cols["n_chunks"].append(d.n_chunks)
        cols["est_tokens"].append(d.est_tokens)
        cols["billed_tokens"].append(float(d.billed_tokens))
        cols["cost_usd"].append(d.cost_usd)
        cols["score"].append(d.score)
        cols["route_reason"].append(d.route_reason)
        cols["fell_back"].append(d.fell_back)
        cols["embedded_at"].append(now)
    return pa.table(dict(cols), schema=_schema(dim))


class LanceDBStore:
    """Read/write access to the tables of one LanceDB database."""

    def __init__(self, config: LanceDBSinkConfig) -> None:
        import lancedb

        self.config = config
        self.db = lancedb.connect(config.uri)

    def _open(self, version: str, dim: int | None) -> Any:
        name = self.config.table_name(version)
        try:
            return self.db.open_table(name)
        except ValueError:  # "Table ... was not found"
            pass
        if dim is None:
            return None
        return self.db.create_table(name, schema=_schema(dim), exist_ok=True)

    def upsert(self, docs: list[EmbeddedDocument]) -> None:
        """Upsert documents of ONE model version; raises on a dimension mismatch."""
        version = docs[0].model_version
        table = self._open(version, len(docs[0].vector))
        expected = table.schema.field("vector").type.list_size
        if expected != len(docs[0].vector):
            raise ValueError(
                f"table {self.config.table_name(version)} holds {expected}-dim vectors but model "
                f"version {version} produced {len(docs[0].vector)}; give the new model a new version"
            )
        # lancedb retries a concurrent commit conflict itself (see the module docstring)
        (table.merge_insert("id").when_matched_update_all()
         .when_not_matched_insert_all().execute(_to_table(docs)))

    def versions(self) -> list[str]:
        """Table suffixes present (model versions with '-' and '.' turned into '_')."""
        prefix = f"{self.config.table_prefix}__"
        names = self.db.list_tables().tables
        return sorted(n[len(prefix):] for n in names if n.startswith(prefix))

    def count(self, version: str) -> int:
        table = self._open(version, None)
        return 0 if table is None else int(table.count_rows())

    def existing_hashes(self, version: str) -> dict[str, str]:
        table = self._open(version, None)
        if table is None:
            return {}
        # an empty query has no row limit; read only the two columns, never text or vectors
        cols = table.search().select(["id", "content_hash"]).to_arrow().to_pydict()
        return dict(zip(cols["id"], cols["content_hash"], strict=True))

    def stored_rows(self, page_rows: int = 10_000) -> Iterator[StoredRow]:
        """Every row of every version's table: id, model version, content hash, embedded_at
        (read as a stream of the four small columns, never text or vectors)."""
        prefix = f"{self.config.table_prefix}__"
        for name in sorted(self.db.list_tables().tables):
            if not name.startswith(prefix):
                continue
            table = self.db.open_table(name)
            wanted = ["id", "model_version", "content_hash", "embedded_at"]
            for batch in table.search().select(wanted).to_batches(page_rows):
                cols = batch.to_pydict()
                for i, version, digest, at in zip(*(cols[c] for c in wanted), strict=True):
                    yield StoredRow(i, version or name[len(prefix):], digest or "", at)

    def delete(self, version: str, rows: Mapping[str, str]) -> int:
        """Delete ``version``'s rows of the ids in ``rows`` ({id: content hash}); a row is
        deleted only while it still holds that content hash (a run that re-embedded the
        document meanwhile wins). Returns the number of rows deleted."""
        table = self._open(version, None)
        if table is None or not rows:
            return 0
        items = sorted(rows.items())
        deleted = 0
        for start in range(0, len(items), DELETE_CHUNK):
            part = items[start : start + DELETE_CHUNK]
            where = " OR ".join(f"(id = {_sql_text(i)} AND content_hash = {_sql_text(h)})" for i, h in part)
            deleted += int(table.delete(where).num_deleted_rows)
        return deleted

    def search(self, version: str, vector: list[float], k: int) -> list[SearchHit]:
        table = self._open(version, None)
        if table is None:
            return []
        rows = (table.search(vector).metric("cosine")
                .select(["id", "text", "tier", "model_version", "metadata", "_distance"]).limit(k).to_list())
        return [
            SearchHit(r["id"], 1.0 - float(r["_distance"]), r["text"], r["model_version"], r["tier"],
                      r["metadata"])
            for r in rows
        ]


def _sql_text(value: str) -> str:
    """A string literal for a LanceDB (DataFusion SQL) filter."""
    return "'" + value.replace("'", "''") + "'"


@beam.typehints.with_input_types(EmbeddedDocument)
@beam.typehints.with_output_types(str, dead_letters=DeadLetter)
class _WriteFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, config: LanceDBSinkConfig) -> None:
        self._config = config
        self._store: LanceDBStore | None = None
        self._buffers: dict[str, list[EmbeddedDocument]] = defaultdict(list)
        self._telemetry = SinkTelemetry(config.telemetry)

    def setup(self) -> None:
        self._store = LanceDBStore(self._config)
        self._telemetry.setup()

    def teardown(self) -> None:
        self._telemetry.teardown()

    def start_bundle(self) -> None:
        self._buffers = defaultdict(list)

    def process(self, doc: EmbeddedDocument) -> Iterator[object]:
        reason = unstorable_reason(doc)
        if reason is not None:  # alone, before it can take a batch down with it
            yield pvalue.TaggedOutput("dead_letters", _unstorable(doc, reason))
            return
        buf = self._buffers[doc.model_version]
        buf.append(doc)
        if len(buf) >= self._config.batch_size:
            yield from self._flush(doc.model_version)

    def finish_bundle(self) -> Iterator[object]:
        for version in list(self._buffers):
            for item in self._flush(version):
                yield in_global_window(item)

    def _flush(self, version: str) -> Iterable[object]:
        docs = self._buffers.pop(version, [])
        if not docs:
            return []
        assert self._store is not None
        try:
            self._store.upsert(docs)
        except Exception as exc:  # noqa: BLE001 - every object of the flush is dead-lettered
            _log.error("upsert of %d documents into LanceDB failed: %s", len(docs), exc)
            return [pvalue.TaggedOutput("dead_letters", _dead(d, exc)) for d in docs]
        beam.metrics.Metrics.counter("tierembed", f"written.{version}").inc(len(docs))
        self._telemetry.written(docs)
        return [d.document.id for d in docs]


def _unstorable(doc: EmbeddedDocument, reason: str) -> DeadLetter:
    beam.metrics.Metrics.counter("tierembed", "dead_letters.write").inc()
    return DeadLetter(
        stage=STAGE, error_type="UnstorableDocument", retryable=False,
        message=f"document {doc.document.id!r} (model version {doc.model_version}): {reason}; "
        "not written to LanceDB, the other documents of its batch were",
        doc_id=doc.document.id, source=doc.document.source, payload=document_payload(doc.document),
        tier=doc.tier.value, model_version=doc.model_version,
    )


def _dead(doc: EmbeddedDocument, exc: Exception) -> DeadLetter:
    beam.metrics.Metrics.counter("tierembed", "dead_letters.write").inc()
    return DeadLetter(
        stage=STAGE,
        error_type=type(exc).__name__,
        message=f"document {doc.document.id!r}: upsert into LanceDB failed: {exc}; "
        "sent to the dead-letter output, replay with `tierembed replay`",
        retryable=True,
        doc_id=doc.document.id,
        source=doc.document.source,
        payload=document_payload(doc.document),
        tier=doc.tier.value,
        model_version=doc.model_version,
    )
