"""Store rows and deletes for prune: the same test body against LanceDB and the Weaviate
protocol double (the real weaviate-client on the wire, BatchDelete over gRPC)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore
from beam_pipeline.sinks.weaviate_sink import WeaviateSinkConfig, WeaviateStore
from tests.fakes.weaviate_double import WeaviateDouble
from tiering.documents import Document, EmbeddedDocument, Tier


def _emb(doc_id: str, version: str, digest: str | None = None) -> EmbeddedDocument:
    doc = Document(doc_id, f"text of {doc_id}", "s:1", json.dumps({}), digest or f"h-{doc_id}")
    return EmbeddedDocument(doc, Tier.LOCAL, version, "m", (1.0, 0.5, 0.0), 1, 3)


def _rows(store: Any) -> set[tuple[str, str, str]]:
    return {(r.version, r.doc_id, r.content_hash) for r in store.stored_rows()}


@pytest.fixture(params=["lancedb", "weaviate"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if request.param == "lancedb":
        yield LanceDBStore(LanceDBSinkConfig(str(tmp_path / "db"), "docs"))
        return
    with WeaviateDouble() as double:
        monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", double.pypi_url)
        with WeaviateStore(WeaviateSinkConfig(url=double.url, grpc_port=double.grpc_port)) as wv:
            yield wv


def test_stored_rows_list_every_version_and_delete_removes_exactly_the_rows_named(store: Any) -> None:
    assert list(store.stored_rows()) == []  # nothing stored yet: no table, no collection
    assert store.delete("v-1", {"a": "h-a"}) == 0
    store.upsert([_emb(i, "v-1") for i in "abc"])
    store.upsert([_emb("b", "v-2")])
    rows = list(store.stored_rows())
    assert {(r.version, r.doc_id, r.content_hash) for r in rows} == {
        ("v-1", "a", "h-a"), ("v-1", "b", "h-b"), ("v-1", "c", "h-c"), ("v-2", "b", "h-b")}
    assert all(r.embedded_at is not None and r.embedded_at.tzinfo is not None for r in rows)
    # b is named for v-1 only; c's hash is not the one stored (re-embedded meanwhile): kept
    assert store.delete("v-1", {"a": "h-a", "b": "h-b", "c": "h-other", "zz": "h-zz"}) == 2
    assert _rows(store) == {("v-1", "c", "h-c"), ("v-2", "b", "h-b")}
    assert store.delete("no-such-version", {"c": "h-c"}) == 0
    assert store.delete("v-1", {}) == 0 and store.count("v-1") == 1


def test_delete_of_more_rows_than_one_chunk(store: Any) -> None:
    ids = [f"d{i:04d}" for i in range(620)]  # over both stores' chunk sizes
    for start in range(0, len(ids), 500):
        store.upsert([_emb(i, "v-1") for i in ids[start:start + 500]])
    assert store.delete("v-1", {i: f"h-{i}" for i in ids[:-3]}) == 617
    assert {r.doc_id for r in store.stored_rows()} == set(ids[-3:])


def test_weaviate_delete_repeats_while_the_server_limit_leaves_matches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with WeaviateDouble(query_maximum_results=3) as double:
        monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", double.pypi_url)
        with WeaviateStore(WeaviateSinkConfig(url=double.url, grpc_port=double.grpc_port)) as wv:
            wv.upsert([_emb(f"d{i}", "v-1") for i in range(8)])
            assert wv.delete("v-1", {f"d{i}": f"h-d{i}" for i in range(7)}) == 7
            assert double.calls["grpc BatchDelete"] == 3  # 3 + 3 + 1: the limit is per call
            assert {r.doc_id for r in wv.stored_rows()} == {"d7"}


def test_weaviate_double_answers_batch_delete_like_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from weaviate.classes.query import Filter

    with WeaviateDouble(query_maximum_results=2) as double:
        monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", double.pypi_url)
        with WeaviateStore(WeaviateSinkConfig(url=double.url, grpc_port=double.grpc_port)) as wv:
            wv.upsert([_emb(f"d{i}", "v-1") for i in range(5)])
            collection = wv._collection
            where = Filter.by_property("model_version").equal("v-1")
            dry = collection.data.delete_many(where=where, dry_run=True, verbose=True)
            assert (dry.matches, dry.successful, dry.failed) == (5, 2, 0)  # matches counts all
            assert len(dry.objects) == 2 and len(double.objects("Document")) == 5  # nothing deleted
            uuids = {str(o["uuid"]) for o in double.objects("Document")}
            assert {str(o.uuid) for o in dry.objects} <= uuids  # uuids survive the big-int encoding
            real = collection.data.delete_many(where=where)
            assert (real.matches, real.successful) == (5, 2) and len(double.objects("Document")) == 3
            none = collection.data.delete_many(where=Filter.by_property("model_version").equal("v-9"))
            assert (none.matches, none.successful) == (0, 0)
