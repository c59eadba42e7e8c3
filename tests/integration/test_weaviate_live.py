"""The Weaviate sink against a REAL Weaviate server (runs only when WEAVIATE_URL is set).

Start one with ``docker compose -f docker/compose.yaml up weaviate`` (or any Weaviate >= 1.27;
>= 1.31 for adding a model version to an existing collection), then::

    WEAVIATE_URL=http://localhost:8080 WEAVIATE_GRPC_PORT=50051 pytest tests/integration/test_weaviate_live.py

``WEAVIATE_API_KEY`` is sent when set. Each test uses its own collection and deletes it.
The bodies are the ones the protocol double passes in tests/beam_pipeline/test_weaviate_sink.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from beam_pipeline.sinks.weaviate_sink import WeaviateSinkConfig, WeaviateStore
from tests.beam_pipeline.test_weaviate_sink import dead_letters, emb, run_write, sink_contract

URL = os.environ.get("WEAVIATE_URL")

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not URL, reason="WEAVIATE_URL is not set: no real Weaviate to test against "
                       "(e.g. WEAVIATE_URL=http://localhost:8080 with docker/compose.yaml)"),
]


@pytest.fixture
def live(monkeypatch: pytest.MonkeyPatch) -> Iterator[WeaviateSinkConfig]:
    # weaviate-client asks PyPI for its latest version on every connect; skip that here
    monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", "http://127.0.0.1:9/unreachable")
    cfg = WeaviateSinkConfig(
        url=str(URL), grpc_port=int(os.environ.get("WEAVIATE_GRPC_PORT", "50051")),
        collection=f"TierembedTest{uuid.uuid4().hex[:10]}", api_key=os.environ.get("WEAVIATE_API_KEY"),
        batch_size=2,
    )
    yield cfg
    with WeaviateStore(cfg) as store:
        store.drop_collection()


def test_live_sink_contract(live: WeaviateSinkConfig) -> None:
    sink_contract(live, WeaviateStore)


def test_live_dimension_change_dead_letters_each_object(live: WeaviateSinkConfig, tmp_path: Path) -> None:
    run_write(live, [emb("a", (1.0, 0.0))])
    letters = dead_letters(live, [emb("x", (1.0, 0.0, 0.0)), emb("y", (0.0, 1.0, 0.0))], tmp_path)
    assert sorted((d["doc_id"], d["stage"], d["retryable"]) for d in letters) == [
        ("x", "write", False), ("y", "write", False)]


def test_live_second_version_keeps_the_first(live: WeaviateSinkConfig) -> None:
    run_write(live, [emb("a", (1.0, 0.0)), emb("b", (0.0, 1.0))])
    run_write(live, [emb("a", (0.0, 1.0, 0.0), version="v-2")])  # adds a named vector (>= 1.31)
    with WeaviateStore(live) as store:
        assert store.count("v1") == 2 and store.count("v-2") == 1
        assert [h.id for h in store.search("v1", [1.0, 0.0], 1)] == ["a"]
        assert [h.id for h in store.search("v-2", [0.0, 1.0, 0.0], 5)] == ["a"]
