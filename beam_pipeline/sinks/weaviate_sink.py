"""Weaviate: the production vector store.

Layout. One collection (``sink.weaviate.collection``) holds every model version. Each model
version is a NAMED VECTOR of that collection (self-provided vectors, HNSW, cosine), named
after the version (:func:`vector_name`: ``minilm-l6-v2`` -> ``minilm_l6_v2``). Each
(document, model version) pair is ONE object, with UUID ``uuid5("<version>/<doc id>")``
(:func:`object_uuid`), carrying only that version's named vector and properties: the
document (``doc_id``, ``text``, ``source``, ``metadata`` as JSON text) and what that version
produced (``content_hash``, ``tier``, ``model_version``, ``model_name``, ``n_chunks``,
``est_tokens``, ``billed_tokens``, ``cost_usd``, ``score``, ``route_reason``, ``fell_back``,
``embedded_at``).

Why one object per (document, version), not one object per document with all its vectors:
Weaviate's batch import REPLACES an object that has the same UUID, vectors included, so
writing version B's vector into a document's object drops version A's vector. One object
per document would need read-merge-write on every batch (fetch each object with all its
vectors, merge, write back): twice the traffic, and lost updates when two writers merge into
the same object at once - which is the normal case here, since the local and API branches
of one run (coverage mode, A/B splits) write the same documents from parallel bundles or
workers, and Weaviate has no transaction or conditional write to guard the merge. With one
object per (document, version) every write is a blind, idempotent replace of exactly what
that version owns: re-runs replace in place, versions never clobber each other, and the
content hash that SkipUnchanged compares is per version by construction. The cost: a
document's text is stored once per version it has; group by ``doc_id`` for a per-document
view. A search names its target vector, so each version is searched only in its own space
(an object without that vector is not in that vector's index).

A model version new to an existing collection becomes a new named vector
(``config.add_vector``, Weaviate >= 1.31); an older server cannot add named vectors and the
sink stops with a ConfigError that says what to do.

Writes. ``create_write_transform()`` buffers documents in ``process``, flushes at
``batch_size`` objects or ``max_batch_bytes`` of payload and in ``finish_bundle``, with
``insert_many`` (gRPC ``BatchObjects``; never called empty, which would raise). Per-object
failures come back by index and do not raise: each becomes a ``DeadLetter`` (stage
``write``, not retryable: the server rejected that object). The one retry layer on this path
is the client's own (gRPC UNAVAILABLE, exponential backoff, 2 retries for inserts); a flush
that still fails dead-letters each of its objects, retryable when the cause is transient.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam import pvalue

from beam_pipeline.records import document_payload
from beam_pipeline.sinks.bundles import BufferedUpsert, in_global_window
from beam_pipeline.sinks.hits import SearchHit
from beam_pipeline.telemetry import SinkTelemetry, TelemetryContext
from store.stored_hashes import StoredHash, weaviate_hash_pages
from tiering.documents import DeadLetter, EmbeddedDocument
from tiering.errors import ConfigError, TerminalError, TransientError
from tiering.prune import StoredRow
from tiering.settings import SinkSettings, sanitize_identifier
from tiering.storable import unstorable_reason
from tiering.validation import unencodable_at

__all__ = ["WeaviateSinkConfig", "WeaviateStore", "SearchHit", "object_uuid", "vector_name"]

_log = logging.getLogger(__name__)
STAGE = "write"
MIN_VERSION_ADD_VECTOR = (1, 31, 0)  # first Weaviate release that adds named vectors to a collection

# name, data type, tokenization (text only), filterable, searchable. Filterable where a
# store query filters or a user is likely to; the long free text is searchable (BM25) only.
_PROPERTIES: tuple[tuple[str, str, str | None, bool, bool], ...] = (
    ("doc_id", "text", "field", True, False),
    ("text", "text", "word", False, True),
    ("source", "text", "field", True, False),
    ("metadata", "text", "field", False, False),
    ("content_hash", "text", "field", True, False),
    ("tier", "text", "field", True, False),
    ("model_version", "text", "field", True, False),
    ("model_name", "text", "field", True, False),
    ("n_chunks", "int", None, True, False),
    ("est_tokens", "int", None, True, False),
    ("billed_tokens", "number", None, True, False),
    ("cost_usd", "number", None, True, False),
    ("score", "number", None, True, False),
    ("route_reason", "text", "field", True, False),
    ("fell_back", "boolean", None, True, False),
    ("embedded_at", "date", None, True, False),
)
_HIT_PROPERTIES = ["doc_id", "text", "tier", "model_version", "metadata"]
_ROW_PROPERTIES = ["doc_id", "model_version", "content_hash", "embedded_at"]
# Objects per delete_many filter. A batch delete removes at most QUERY_MAXIMUM_RESULTS objects
# (server default 10,000) and reports every match (adapters/repos/db/batch.go,
# BatchDeleteObjects); a chunk far below it keeps the filter small, and ``delete`` repeats a
# call anyway while matches remain, so a server configured lower still deletes them all.
DELETE_CHUNK = 200


def vector_name(model_version: str) -> str:
    """The named vector of a model version (Weaviate names: letters, digits, '_')."""
    name = sanitize_identifier(model_version)
    return name if name[:1].isalpha() else f"v_{name}"


def object_uuid(doc_id: str, model_version: str) -> str:
    """Deterministic object id of one (document, version); versions never contain '/'."""
    from weaviate.util import generate_uuid5

    return str(generate_uuid5(f"{model_version}/{doc_id}"))


def _check_vector_names(versions: Iterable[str]) -> None:
    seen: dict[str, str] = {}
    for version in versions:
        other = seen.setdefault(vector_name(version), version)
        if other != version:
            raise ConfigError(
                f"model versions {other!r} and {version!r} map to the same Weaviate named vector "
                f"{vector_name(version)!r} ('-' and '.' become '_'); rename one of them"
            )


@dataclass(frozen=True, slots=True)
class WeaviateSinkConfig:
    """Where and how the Weaviate sink writes; pickled with the writer DoFn."""

    url: str = "http://localhost:8080"
    grpc_port: int = 50051
    collection: str = "Document"
    api_key: str | None = field(default=None, repr=False)
    batch_size: int = 500
    versions: tuple[str, ...] = ()  # model versions whose named vectors setup() ensures
    grpc_host: str | None = None
    grpc_secure: bool | None = None
    timeout_s: float = 90.0
    max_batch_bytes: int = 16 * 2**20
    telemetry: TelemetryContext | None = None  # documents written and run progress

    def __post_init__(self) -> None:
        if urlsplit(self.url).scheme not in ("http", "https") or not urlsplit(self.url).hostname:
            raise ConfigError(f"sink.weaviate.url {self.url!r} is not http(s)://host[:port]")
        _check_vector_names(self.versions)

    @classmethod
    def from_settings(cls, sink: SinkSettings, versions: Sequence[str] = ()) -> WeaviateSinkConfig:
        w = sink.weaviate
        return cls(
            url=w.url, grpc_port=w.grpc_port, collection=w.collection,
            api_key=w.api_key.get_secret_value() if w.api_key else None,
            batch_size=sink.batch_size, versions=tuple(versions), grpc_host=w.grpc_host,
            grpc_secure=w.grpc_secure, timeout_s=w.timeout_s,
            max_batch_bytes=int(w.max_batch_mb * 2**20),
        )

    def create_write_transform(self) -> beam.PTransform:
        return BufferedUpsert(_WriteFn(self))


def _connect(config: WeaviateSinkConfig) -> Any:
    """Open a weaviate-client v4 connection; vendor start-up errors are mapped here."""
    import weaviate
    from weaviate.classes.init import AdditionalConfig, Auth, Timeout
    from weaviate.exceptions import WeaviateBaseError

    parts = urlsplit(config.url)
    secure = parts.scheme == "https"
    host = parts.hostname or "localhost"
    grpc_host = config.grpc_host or host
    try:
        return weaviate.connect_to_custom(
            http_host=host, http_port=parts.port or (443 if secure else 80), http_secure=secure,
            grpc_host=grpc_host, grpc_port=config.grpc_port,
            grpc_secure=secure if config.grpc_secure is None else config.grpc_secure,
            auth_credentials=Auth.api_key(config.api_key) if config.api_key else None,
            additional_config=AdditionalConfig(
                timeout=Timeout(query=config.timeout_s, insert=config.timeout_s)
            ),
        )
    except WeaviateBaseError as exc:
        raise TransientError(
            f"cannot use Weaviate at {config.url} (gRPC {grpc_host}:{config.grpc_port}): {exc}. "
            "Check sink.weaviate.url / grpc_port / api_key and that the server (>= 1.27) is up",
            stage=STAGE,
        ) from exc


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def _vector_config(name: str) -> Any:
    from weaviate.classes.config import Configure, VectorDistances

    index = Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
    vectors = getattr(Configure, "Vectors", None)  # weaviate-client >= 4.16
    if vectors is not None:
        return vectors.self_provided(name=name, vector_index_config=index)
    return Configure.NamedVectors.none(name=name, vector_index_config=index)


def _property_configs() -> list[Any]:
    from weaviate.classes.config import DataType, Property, Tokenization

    return [
        Property(name=name, data_type=DataType(dtype),
                 tokenization=Tokenization(tok) if tok else None,
                 index_filterable=filterable, index_searchable=searchable if tok else None)
        for name, dtype, tok, filterable, searchable in _PROPERTIES
    ]


def _properties(doc: EmbeddedDocument, now: datetime) -> dict[str, Any]:
    d = doc.document
    return {
        "doc_id": d.id, "text": d.text, "source": d.source, "metadata": d.metadata_json,
        "content_hash": d.hash, "tier": doc.tier.value, "model_version": doc.model_version,
        "model_name": doc.model_name, "n_chunks": int(doc.n_chunks), "est_tokens": int(doc.est_tokens),
        "billed_tokens": float(doc.billed_tokens), "cost_usd": float(doc.cost_usd),
        "score": float(doc.score), "route_reason": doc.route_reason, "fell_back": bool(doc.fell_back),
        "embedded_at": now,
    }


class WeaviateStore:
    """Read/write access to the tierembed collection of one Weaviate server.

    Opening connects (REST + gRPC) and changes nothing; ``ensure_schema`` creates the
    collection or adds named vectors; ``upsert`` does so for the versions it writes. Use it
    as a context manager, or call ``close()``.
    """

    def __init__(self, config: WeaviateSinkConfig, *, client: Any | None = None) -> None:
        self.config = config
        self._owns_client = client is None
        self._client = _connect(config) if client is None else client
        self._vectors: set[str] = set()  # named vectors known to exist

    def __enter__(self) -> WeaviateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_client and self._client is not None:
            self._client.close()
        self._client = None

    @property
    def _collection(self) -> Any:
        return self._client.collections.use(self.config.collection)

    def server_version(self) -> str:
        return str(self._client.get_meta().get("version", ""))

    # -- schema -------------------------------------------------------------------------

    def vector_names(self) -> set[str] | None:
        """Named vectors of the collection, or None when the collection does not exist."""
        if not self._client.collections.exists(self.config.collection):
            return None
        cfg = self._collection.config.get(simple=True)
        if not cfg.vector_config:
            raise ConfigError(
                f"Weaviate collection {self.config.collection!r} exists without named vectors (a "
                "single-vector collection); tierembed keeps one named vector per model version. "
                "Set sink.weaviate.collection to a new name, or delete that collection"
            )
        missing = {name for name, *_ in _PROPERTIES} - {p.name for p in cfg.properties}
        if missing:
            raise ConfigError(
                f"Weaviate collection {self.config.collection!r} lacks the properties "
                f"{sorted(missing)}: it was not created by tierembed. Set sink.weaviate.collection "
                "to a new name, or add the properties"
            )
        return set(cfg.vector_config)

    def ensure_schema(self, versions: Iterable[str]) -> None:
        """Make sure the collection exists with a named vector for each version."""
        from weaviate.exceptions import UnexpectedStatusCodeError

        versions = list(versions)
        _check_vector_names(versions)
        wanted = {vector_name(v) for v in versions}
        if wanted <= self._vectors:
            return
        last: Exception | None = None
        for _ in range(3):  # concurrent writers may create or extend the collection meanwhile
            present = self.vector_names()
            if present is not None and wanted <= present:
                self._vectors = present
                return
            try:
                if present is None:
                    self._create(wanted)
                else:
                    self._add_vectors(wanted - present)
            except UnexpectedStatusCodeError as exc:
                last = exc
        raise ConfigError(
            f"could not create or extend Weaviate collection {self.config.collection!r} with the "
            f"named vectors {sorted(wanted)}: {last}"
        )

    def _create(self, names: set[str]) -> None:
        _log.info("creating Weaviate collection %s with named vectors %s",
                  self.config.collection, sorted(names))
        self._client.collections.create(
            self.config.collection,
            properties=_property_configs(),
            vector_config=[_vector_config(n) for n in sorted(names)],
        )

    def _add_vectors(self, names: set[str]) -> None:
        version = self.server_version()
        if _version_tuple(version) < MIN_VERSION_ADD_VECTOR:
            raise ConfigError(
                f"Weaviate collection {self.config.collection!r} has no named vector for "
                f"{sorted(names)}, and Weaviate {version} cannot add named vectors to an existing "
                "collection (1.31 and later can). Upgrade Weaviate, or write the new model version "
                "to a new collection (sink.weaviate.collection) and re-embed the documents there"
            )
        _log.info("adding named vectors %s to Weaviate collection %s",
                  sorted(names), self.config.collection)
        self._collection.config.add_vector(vector_config=[_vector_config(n) for n in sorted(names)])

    def drop_collection(self) -> None:
        """Delete the collection and every object in it (irreversible)."""
        self._client.collections.delete(self.config.collection)
        self._vectors = set()

    # -- writes -------------------------------------------------------------------------

    def upsert(self, docs: Sequence[EmbeddedDocument]) -> dict[int, str]:
        """Insert or replace one object per (document, version).

        Returns the per-object failures as {index in ``docs``: reason}; raises when the whole
        batch could not be sent.
        """
        from weaviate.classes.data import DataObject
        from weaviate.exceptions import WeaviateInsertManyAllFailedError

        if not docs:
            return {}  # insert_many([]) raises
        self.ensure_schema({d.model_version for d in docs})
        now = datetime.now(UTC)
        objects = [
            DataObject(properties=_properties(d, now), uuid=object_uuid(d.document.id, d.model_version),
                       vector={vector_name(d.model_version): [float(x) for x in d.vector]})
            for d in docs
        ]
        try:
            result = self._collection.data.insert_many(objects)
        except WeaviateInsertManyAllFailedError as exc:  # the client raises when none succeeded
            return {i: f"every object of the batch was rejected: {exc.message}" for i in range(len(docs))}
        return {int(i): str(err.message) for i, err in result.errors.items()}

    # -- reads --------------------------------------------------------------------------

    @contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Map the client's errors on the read paths to ours (writes: see ``is_transient``)."""
        from weaviate.exceptions import WeaviateBaseError

        try:
            yield
        except WeaviateBaseError as exc:
            error = TransientError if is_transient(exc) else TerminalError
            raise error(f"{what} in Weaviate collection {self.config.collection!r} at "
                        f"{self.config.url} failed: {exc}", stage=STAGE) from exc

    def count(self, version: str) -> int:
        from weaviate.classes.query import Filter

        with self._reading(f"counting model version {version!r}"):
            if not self._client.collections.exists(self.config.collection):
                return 0
            reply = self._collection.aggregate.over_all(
                total_count=True, filters=Filter.by_property("model_version").equal(version)
            )
        return int(reply.total_count or 0)

    def existing_hashes(self, version: str) -> dict[str, str]:
        return self.existing_hashes_by_version([version])[version]

    def existing_hashes_by_version(self, versions: Iterable[str]) -> dict[str, dict[str, str]]:
        """{version: {doc id: content hash}} in ONE pass over the collection, in memory.

        For tools and tests; the pipeline joins the rows instead (``beam_pipeline.skip_unchanged``).
        """
        versions = list(versions)
        out: dict[str, dict[str, str]] = {v: {} for v in versions}
        for page in self.stored_hash_pages(versions):
            for row in page:
                out[row.model_version][row.doc_id] = row.content_hash
        return out

    def stored_hash_pages(self, versions: Iterable[str]) -> Iterator[list[StoredHash]]:
        """The (document, version, content hash) rows of ``versions``, page by page, in ONE
        pass over the collection (see ``store.stored_hashes.weaviate_hash_pages``)."""
        with self._reading("reading content hashes"):
            if not self._client.collections.exists(self.config.collection):
                return
            yield from weaviate_hash_pages(self._collection, versions)

    def stored_rows(self) -> Iterator[StoredRow]:
        """Every (document, version) object: id, model version, content hash, embedded_at,
        in one pass of the collection's cursor (which cannot take a filter)."""
        with self._reading("reading stored rows"):
            if not self._client.collections.exists(self.config.collection):
                return
            for obj in self._collection.iterator(return_properties=_ROW_PROPERTIES):
                p = obj.properties
                at = p.get("embedded_at")
                yield StoredRow(str(p["doc_id"]), str(p.get("model_version") or ""),
                                str(p.get("content_hash") or ""), at if isinstance(at, datetime) else None)

    def delete(self, version: str, rows: Mapping[str, str]) -> int:
        """Delete ``version``'s objects of the ids in ``rows`` ({id: content hash}) with
        ``delete_many`` (gRPC BatchDelete); an object is deleted only while it still holds that
        content hash. Returns the number deleted; raises when the server reports a failure."""
        from weaviate.classes.query import Filter

        items = sorted(rows.items())
        with self._reading("checking the collection"):
            if not items or not self._client.collections.exists(self.config.collection):
                return 0  # the server refuses a delete in a collection it does not have
        deleted = 0
        for start in range(0, len(items), DELETE_CHUNK):
            part = items[start : start + DELETE_CHUNK]
            where = Filter.by_property("model_version").equal(version) & Filter.any_of([
                Filter.by_id().equal(object_uuid(i, version)) & Filter.by_property("content_hash").equal(h)
                for i, h in part])
            deleted += self._delete_all(where, version)
        return deleted

    def _delete_all(self, where: Any, version: str) -> int:
        """``delete_many`` until nothing matches: one call removes at most the server's
        QUERY_MAXIMUM_RESULTS objects while ``matches`` counts them all."""
        deleted = 0
        with self._reading(f"deleting stale objects of model version {version!r}"):
            while True:
                reply = self._collection.data.delete_many(where=where, verbose=False)
                deleted += int(reply.successful)
                if reply.failed:
                    raise TerminalError(
                        f"Weaviate could not delete {reply.failed} of {reply.matches} stale objects of "
                        f"model version {version!r} in collection {self.config.collection!r} ({deleted} "
                        "deleted); run `tierembed prune --apply` again to retry them", stage="prune")
                if reply.matches <= reply.successful:
                    return deleted
                if reply.successful == 0:  # matches left, none deleted: never loop on it
                    raise TerminalError(
                        f"Weaviate matched {reply.matches} stale objects of model version {version!r} "
                        f"but deleted none ({deleted} deleted before); run `tierembed prune --apply` again",
                        stage="prune")

    def search(self, version: str, vector: Sequence[float], k: int) -> list[SearchHit]:
        """Nearest documents in ``version``'s own space; score = cosine similarity."""
        from weaviate.classes.query import MetadataQuery

        name = vector_name(version)
        with self._reading(f"searching model version {version!r}"):
            if name not in (self.vector_names() or set()):
                return []
            reply = self._collection.query.near_vector(
                near_vector=[float(x) for x in vector], target_vector=name, limit=k,
                return_metadata=MetadataQuery(distance=True), return_properties=_HIT_PROPERTIES,
            )
        hits = []
        for obj in reply.objects:
            p = obj.properties
            hits.append(SearchHit(str(p["doc_id"]), 1.0 - float(obj.metadata.distance or 0.0),
                                  str(p.get("text", "")), str(p.get("model_version", version)),
                                  str(p.get("tier", "")), str(p.get("metadata", "{}"))))
        return hits


def is_transient(exc: BaseException) -> bool:
    """Whether a failed flush may succeed if replayed (by exception type and status code)."""
    from weaviate import exceptions as wx

    if isinstance(exc, TransientError | wx.WeaviateConnectionError | wx.WeaviateTimeoutError
                  | wx.WeaviateBatchError | wx.WeaviateRetryError | wx.WeaviateGRPCUnavailableError):
        return True
    if isinstance(exc, wx.UnexpectedStatusCodeError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


def _payload_bytes(doc: EmbeddedDocument) -> int:
    d = doc.document
    return len(d.text.encode("utf-8")) + len(d.metadata_json) + 4 * len(doc.vector) + 512


@beam.typehints.with_input_types(EmbeddedDocument)
@beam.typehints.with_output_types(str, dead_letters=DeadLetter)
class _WriteFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, config: WeaviateSinkConfig) -> None:
        self._config = config
        self._store: WeaviateStore | None = None
        self._buffer: list[EmbeddedDocument] = []
        self._bytes = 0
        self._telemetry = SinkTelemetry(config.telemetry)

    def setup(self) -> None:
        self._store = WeaviateStore(self._config)
        self._store.ensure_schema(self._config.versions)
        self._telemetry.setup()

    def start_bundle(self) -> None:
        self._buffer, self._bytes = [], 0

    def process(self, doc: EmbeddedDocument) -> Iterator[object]:
        reason = unstorable_reason(doc)
        if reason is not None:  # alone, before it can take a batch down with it
            yield _dead(doc, "UnstorableDocument", f"{reason}; the other documents of its batch were "
                        "written", False)
            return
        self._buffer.append(doc)
        self._bytes += _payload_bytes(doc)
        if len(self._buffer) >= self._config.batch_size or self._bytes >= self._config.max_batch_bytes:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[object]:
        for item in self._flush():
            yield in_global_window(item)

    def teardown(self) -> None:
        self._telemetry.teardown()
        if self._store is not None:
            self._store.close()
            self._store = None

    def _flush(self) -> list[object]:
        docs, self._buffer, self._bytes = self._buffer, [], 0
        if not docs:
            return []
        assert self._store is not None
        try:
            failures = self._store.upsert(docs)
        except Exception as exc:  # noqa: BLE001 - every object of the flush is dead-lettered
            _log.error("upsert of %d objects into Weaviate failed: %s", len(docs), exc)
            reason = f"upsert into Weaviate failed: {exc}"
            return [_dead(d, type(exc).__name__, reason, is_transient(exc)) for d in docs]
        written = [d for i, d in enumerate(docs) if i not in failures]
        for d in written:
            beam.metrics.Metrics.counter("tierembed", f"written.{d.model_version}").inc()
        if written:
            self._telemetry.written(written)
        return [
            _dead(d, "WeaviateObjectRejected", f"Weaviate rejected the object: {failures[i]}", False)
            if i in failures else d.document.id
            for i, d in enumerate(docs)
        ]


def _dead(doc: EmbeddedDocument, error_type: str, reason: str, retryable: bool) -> pvalue.TaggedOutput:
    beam.metrics.Metrics.counter("tierembed", "dead_letters.write").inc()
    then = ("replay with `tierembed replay`" if retryable
            else "fix the cause, then replay with `tierembed replay`")
    letter = DeadLetter(
        stage=STAGE,
        error_type=error_type,
        message=f"document {doc.document.id!r} (model version {doc.model_version}): {reason}; "
        f"sent to the dead-letter output, {then}",
        retryable=retryable,
        doc_id=doc.document.id,
        source=doc.document.source,
        payload=document_payload(doc.document),
        tier=doc.tier.value,
        model_version=doc.model_version,
        extra=(("object_uuid", object_uuid(doc.document.id, doc.model_version)),)
        if unencodable_at(doc.document.id) is None else (),  # no uuid for an id UTF-8 cannot encode
    )
    return pvalue.TaggedOutput("dead_letters", letter)
