"""Reading the vector store outside the pipeline: search, vectors by id, whole tables.

Search and eval read the store through :class:`VectorReader`; the Beam sinks write it.
This module imports no Beam: :class:`LanceDBReader` talks to LanceDB directly (one table
per model version, ``<prefix>__<version>``, as the LanceDB sink writes them), and
:class:`WeaviateReader` wraps the Weaviate store client (one named vector per version).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from tiering.prune import RowStamp
from tiering.settings import TierembedSettings, sanitize_identifier

if TYPE_CHECKING:
    from beam_pipeline.sinks.hits import SearchHit

__all__ = ["StoredDoc", "StoredVersion", "VectorReader", "LanceDBReader", "WeaviateReader", "open_reader"]

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class StoredDoc:
    """One (document, version) row: its vector and what search shows of it."""

    id: str
    text: str
    content_hash: str
    vector: FloatMatrix


@dataclass(frozen=True)
class StoredVersion:
    """A whole version's table, for eval: rows in ``ids`` order."""

    version: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    hashes: tuple[str, ...]
    vectors: FloatMatrix
    cost_usd: float


class VectorReader(Protocol):
    """What search and eval need from a store."""

    def count(self, version: str) -> int: ...

    def search(self, version: str, vector: Sequence[float], k: int) -> list[SearchHit]: ...

    def ids(self, version: str) -> list[str]: ...

    def fetch(self, version: str, ids: Iterable[str]) -> dict[str, StoredDoc]: ...

    def stamps(self, version: str, ids: Iterable[str]) -> dict[str, RowStamp]: ...

    def read_version(self, version: str) -> StoredVersion: ...

    def close(self) -> None: ...


def _quoted(ids: Iterable[str]) -> str:
    return ", ".join("'" + i.replace("'", "''") + "'" for i in ids)


def _unit(rows: Any) -> FloatMatrix:
    matrix = np.asarray(rows, dtype=np.float32)
    if matrix.ndim != 2:
        return matrix.reshape(0, 0)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    out: FloatMatrix = matrix / np.where(norms == 0, 1.0, norms)
    return out


class LanceDBReader:
    """Read access to the LanceDB tables the LanceDB sink writes."""

    def __init__(self, uri: str, table_prefix: str) -> None:
        import lancedb

        self.prefix = table_prefix
        self.db = lancedb.connect(uri)

    def _table(self, version: str) -> Any:
        try:
            return self.db.open_table(f"{self.prefix}__{sanitize_identifier(version)}")
        except ValueError:  # "Table ... was not found"
            return None

    def count(self, version: str) -> int:
        table = self._table(version)
        return 0 if table is None else int(table.count_rows())

    def search(self, version: str, vector: Sequence[float], k: int) -> list[SearchHit]:
        from beam_pipeline.sinks.hits import SearchHit

        table = self._table(version)
        if table is None:
            return []
        rows = (table.search(list(vector)).metric("cosine")
                .select(["id", "text", "tier", "model_version", "metadata", "_distance"]).limit(k).to_list())
        return [SearchHit(r["id"], 1.0 - float(r["_distance"]), r["text"], r["model_version"], r["tier"],
                          r["metadata"]) for r in rows]

    def ids(self, version: str) -> list[str]:
        table = self._table(version)
        if table is None:
            return []
        return list(table.search().select(["id"]).to_arrow().column("id").to_pylist())

    def _rows_by_id(self, version: str, ids: Iterable[str], columns: list[str]) -> Iterator[dict[str, list]]:
        """``columns`` of ``version``'s rows of ``ids``, as column dicts, 500 ids a query."""
        wanted = sorted(set(ids))
        table = self._table(version)
        if table is None:
            return
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            yield (table.search().where(f"id IN ({_quoted(part)})")
                   .select(columns).limit(len(part)).to_arrow().to_pydict())

    def fetch(self, version: str, ids: Iterable[str]) -> dict[str, StoredDoc]:
        out: dict[str, StoredDoc] = {}
        for cols in self._rows_by_id(version, ids, ["id", "text", "content_hash", "vector"]):
            vectors = _unit(cols["vector"]) if cols["id"] else np.zeros((0, 0), np.float32)
            for i, doc_id in enumerate(cols["id"]):
                out[doc_id] = StoredDoc(doc_id, cols["text"][i], cols["content_hash"][i], vectors[i])
        return out

    def stamps(self, version: str, ids: Iterable[str]) -> dict[str, RowStamp]:
        """Content hash and embedded_at of ``version``'s rows of ``ids`` (two small columns)."""
        out: dict[str, RowStamp] = {}
        for cols in self._rows_by_id(version, ids, ["id", "content_hash", "embedded_at"]):
            for doc_id, digest, at in zip(cols["id"], cols["content_hash"], cols["embedded_at"], strict=True):
                out[doc_id] = RowStamp(digest or "", at)
        return out

    def read_version(self, version: str) -> StoredVersion:
        table = self._table(version)
        if table is None:
            return StoredVersion(version, (), (), (), np.zeros((0, 0), np.float32), 0.0)
        wanted = ["id", "text", "content_hash", "vector", "cost_usd"]
        cols = table.search().select(wanted).to_arrow().to_pydict()
        order = sorted(range(len(cols["id"])), key=lambda i: cols["id"][i])
        vectors = _unit([cols["vector"][i] for i in order]) if order else np.zeros((0, 0), np.float32)
        return StoredVersion(version, tuple(cols["id"][i] for i in order),
                             tuple(cols["text"][i] for i in order),
                             tuple(cols["content_hash"][i] for i in order), vectors,
                             float(sum(cols["cost_usd"])))

    def close(self) -> None:
        return None


class WeaviateReader:
    """Read access to the Weaviate collection the Weaviate sink writes (one object per
    (document, version), the version's named vector on it)."""

    def __init__(self, settings: TierembedSettings) -> None:
        from beam_pipeline.sinks.weaviate_sink import WeaviateSinkConfig, WeaviateStore

        self._store = WeaviateStore(WeaviateSinkConfig.from_settings(settings.sink))

    def count(self, version: str) -> int:
        return self._store.count(version)

    def search(self, version: str, vector: Sequence[float], k: int) -> list[SearchHit]:
        return self._store.search(version, vector, k)

    def _objects(self, version: str, ids: Sequence[str] | None) -> Iterable[Any]:
        from weaviate.classes.query import Filter

        from beam_pipeline.sinks.weaviate_sink import vector_name

        collection = self._store._collection
        name = vector_name(version)
        if ids is None:
            for obj in collection.iterator(include_vector=[name],
                                           return_properties=["doc_id", "text", "content_hash",
                                                              "model_version", "cost_usd"]):
                if obj.properties.get("model_version") == version:
                    yield obj
            return
        for start in range(0, len(ids), 200):
            part = list(ids[start : start + 200])
            reply = collection.query.fetch_objects(
                filters=Filter.by_property("model_version").equal(version)
                & Filter.by_property("doc_id").contains_any(part),
                include_vector=[name], limit=len(part),
                return_properties=["doc_id", "text", "content_hash", "model_version", "cost_usd"])
            yield from reply.objects

    def ids(self, version: str) -> list[str]:
        return list(self._store.existing_hashes(version))

    def fetch(self, version: str, ids: Iterable[str]) -> dict[str, StoredDoc]:
        from beam_pipeline.sinks.weaviate_sink import vector_name

        name, out = vector_name(version), {}
        for obj in self._objects(version, sorted(set(ids))):
            p = obj.properties
            vec = _unit([obj.vector[name]])[0]
            out[str(p["doc_id"])] = StoredDoc(str(p["doc_id"]), str(p.get("text", "")),
                                              str(p.get("content_hash", "")), vec)
        return out

    def stamps(self, version: str, ids: Iterable[str]) -> dict[str, RowStamp]:
        from weaviate.classes.query import Filter

        wanted, out = sorted(set(ids)), {}
        for start in range(0, len(wanted), 200):
            part = wanted[start : start + 200]
            reply = self._store._collection.query.fetch_objects(
                filters=Filter.by_property("model_version").equal(version)
                & Filter.by_property("doc_id").contains_any(part),
                limit=len(part), return_properties=["doc_id", "content_hash", "embedded_at"])
            for obj in reply.objects:
                p = obj.properties
                at = p.get("embedded_at")
                out[str(p["doc_id"])] = RowStamp(str(p.get("content_hash") or ""),
                                                 at if isinstance(at, datetime) else None)
        return out

    def read_version(self, version: str) -> StoredVersion:
        from beam_pipeline.sinks.weaviate_sink import vector_name

        name = vector_name(version)
        rows = sorted(((str(o.properties["doc_id"]), o) for o in self._objects(version, None)),
                      key=lambda r: r[0])
        vectors = _unit([o.vector[name] for _, o in rows]) if rows else np.zeros((0, 0), np.float32)
        return StoredVersion(version, tuple(i for i, _ in rows),
                             tuple(str(o.properties.get("text", "")) for _, o in rows),
                             tuple(str(o.properties.get("content_hash", "")) for _, o in rows), vectors,
                             float(sum(float(o.properties.get("cost_usd") or 0.0) for _, o in rows)))

    def close(self) -> None:
        self._store.close()


def open_reader(settings: TierembedSettings) -> VectorReader:
    """The configured store (``sink.kind``), read-only; close it when done."""
    if settings.sink.kind == "weaviate":
        return WeaviateReader(settings)
    lc = settings.sink.lancedb
    return LanceDBReader(lc.uri, lc.table_prefix)
