"""The store readers search and eval use: the same test body against LanceDB and the
Weaviate protocol double (the real weaviate-client on the wire)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore
from beam_pipeline.sinks.weaviate_sink import WeaviateSinkConfig, WeaviateStore
from store.vector_reader import LanceDBReader, VectorReader, WeaviateReader
from tests.fakes.weaviate_double import WeaviateDouble
from tiering.documents import Document, EmbeddedDocument, Tier
from tiering.settings import load_settings


def _emb(doc_id: str, vec: tuple[float, ...], version: str, cost: float) -> EmbeddedDocument:
    return EmbeddedDocument(Document(doc_id, f"text of {doc_id}", "s:1", json.dumps({"n": 1}), f"h-{doc_id}"),
                            Tier.LOCAL, version, "m", vec, 1, 3, cost_usd=cost)


DOCS = {"v-1": [("a", (1.0, 0.0, 0.0)), ("b", (0.0, 1.0, 0.0)), ("c", (0.6, 0.8, 0.0))],
        "v-2": [("b", (0.0, 0.0, 2.0))]}


@pytest.fixture(params=["lancedb", "weaviate"])
def reader(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[VectorReader]:
    batches = [[_emb(i, v, version, 0.25) for i, v in docs] for version, docs in DOCS.items()]
    if request.param == "lancedb":
        store = LanceDBStore(LanceDBSinkConfig(str(tmp_path / "db"), "docs"))
        for batch in batches:
            store.upsert(batch)
        yield LanceDBReader(str(tmp_path / "db"), "docs")
        return
    with WeaviateDouble() as double:
        monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", double.pypi_url)
        with WeaviateStore(WeaviateSinkConfig(url=double.url, grpc_port=double.grpc_port)) as store:
            for batch in batches:
                assert store.upsert(batch) == {}
        settings = load_settings(overrides={"sink": {"kind": "weaviate", "weaviate": {
            "url": double.url, "grpc_port": double.grpc_port}}})
        r = WeaviateReader(settings)
        yield r
        r.close()


def test_reader_counts_lists_fetches_reads_and_searches_each_version(reader: VectorReader) -> None:
    assert reader.count("v-1") == 3 and reader.count("v-2") == 1 and reader.count("nope") == 0
    assert sorted(reader.ids("v-1")) == ["a", "b", "c"] and reader.ids("v-2") == ["b"]
    got = reader.fetch("v-1", ["c", "a", "missing"])
    assert sorted(got) == ["a", "c"] and got["c"].content_hash == "h-c" and got["c"].text == "text of c"
    assert np.allclose(got["c"].vector, [0.6, 0.8, 0.0], atol=1e-6)
    assert np.allclose(reader.fetch("v-2", ["b"])["b"].vector, [0, 0, 1])  # unit length
    table = reader.read_version("v-1")
    assert table.ids == ("a", "b", "c") and table.vectors.shape == (3, 3)
    assert table.cost_usd == pytest.approx(0.75)
    hits = reader.search("v-1", [0.0, 1.0, 0.0], 2)
    assert [h.id for h in hits] == ["b", "c"] and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_reader_stamps_give_hash_and_time_of_the_ids_a_version_holds(reader: VectorReader) -> None:
    stamps = reader.stamps("v-1", ["c", "a", "missing"])
    assert sorted(stamps) == ["a", "c"] and stamps["c"].content_hash == "h-c"
    assert all(s.embedded_at is not None and s.embedded_at.tzinfo is not None for s in stamps.values())
    assert reader.stamps("v-2", ["a"]) == {} and reader.stamps("v-1", []) == {}
