"""The Weaviate sink against the Weaviate protocol double (the real weaviate-client on the wire).

``sink_contract`` is the test body every sink must pass (dlt-style); it runs here against
LanceDB and the double, and in tests/integration/test_weaviate_live.py against a real server.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import grpc
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.pipeline import PipelineSpec, ResolvedApi, run_pipeline, sink_config
from beam_pipeline.sinks import LanceDBSinkConfig, WriteEmbeddings
from beam_pipeline.sinks.lancedb_sink import LanceDBStore
from beam_pipeline.sinks.weaviate_sink import (
    WeaviateSinkConfig,
    WeaviateStore,
    object_uuid,
    vector_name,
)
from flows.search import open_store
from tests.conftest import SettingsFactory, api_overrides, corpus, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.weaviate_double import REJECT_MARKER, WeaviateDouble
from tiering.documents import DeadLetter, Document, EmbeddedDocument, Tier
from tiering.errors import ConfigError, TerminalError, TransientError

OpenStore = Callable[[Any], contextlib.AbstractContextManager[Any]]


def emb(doc_id: str, vec: tuple[float, ...], text: str = "t", version: str = "v1") -> EmbeddedDocument:
    return EmbeddedDocument(Document(doc_id, text, "s:1", json.dumps({"n": 1}), f"hash-{text}"),
                            Tier.LOCAL, version, "m", vec, 1, 3, cost_usd=0.5)


def run_write(cfg: Any, docs: list[EmbeddedDocument]) -> None:
    with TestPipeline() as p:
        out = p | beam.Create(docs) | WriteEmbeddings(cfg)
        assert_that(out["dead_letters"] | beam.Map(lambda d: d.doc_id), equal_to([]), label="dl")


def dead_letters(cfg: Any, docs: list[EmbeddedDocument], where: Path) -> list[dict[str, Any]]:
    """Write ``docs`` through the transform; return its dead letters as written to JSONL."""
    path = where / "dead-letters.jsonl"
    with TestPipeline() as p:
        out = p | beam.Create(docs) | WriteEmbeddings(cfg)
        (out["dead_letters"] | beam.Map(DeadLetter.to_json)
         | beam.io.WriteToText(str(path), shard_name_template=""))
    return [json.loads(line) for line in path.read_text().splitlines()]


def sink_contract(cfg: Any, open_store_: OpenStore, second: str = "v-2") -> None:
    """The same body for every sink: upsert, replace on re-run, count, hashes, search."""
    run_write(cfg, [emb("a", (1.0, 0.0), "alpha"), emb("b", (0.0, 1.0), "beta"),
                    emb("c", (0.6, 0.8), "gamma"), emb("a", (1.0, 0.0, 0.0), "alpha", second)])
    run_write(cfg, [emb("b", (0.0, 1.0), "beta v2")])  # a re-run replaces, never duplicates
    with open_store_(cfg) as store:
        assert store.count("v1") == 3 and store.count(second) == 1
        assert store.existing_hashes("v1") == {"a": "hash-alpha", "b": "hash-beta v2", "c": "hash-gamma"}
        assert store.existing_hashes(second) == {"a": "hash-alpha"}
        assert store.existing_hashes("never-written") == {}
        top = store.search("v1", [0.0, 1.0], 2)
        assert [h.id for h in top] == ["b", "c"] and top[0].text == "beta v2"
        assert top[0].model_version == "v1" and top[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.id for h in store.search(second, [1.0, 0.0, 0.0], 5)] == ["a"]


@pytest.fixture
def wv(monkeypatch: pytest.MonkeyPatch) -> Iterator[WeaviateDouble]:
    with WeaviateDouble() as double:
        # the client checks PyPI on every connect(); these machines cannot reach it
        monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", double.pypi_url)
        yield double


def wv_config(double: WeaviateDouble, **kw: Any) -> WeaviateSinkConfig:
    return WeaviateSinkConfig(url=double.url, grpc_port=double.grpc_port, **{"batch_size": 2, **kw})


@pytest.mark.parametrize("backend", ["lancedb", "weaviate"])
def test_every_sink_upserts_replaces_counts_hashes_and_searches(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "lancedb":
        sink_contract(LanceDBSinkConfig(str(tmp_path / "db"), batch_size=2),
                      lambda c: contextlib.nullcontext(LanceDBStore(c)))
        return
    with WeaviateDouble() as double:
        monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", double.pypi_url)
        sink_contract(wv_config(double), WeaviateStore)
        assert len(double.objects("Document")) == 4  # one object per (document, version)


def test_rerun_replaces_objects_in_place(wv: WeaviateDouble) -> None:
    cfg = wv_config(wv, versions=("v1",))
    run_write(cfg, [emb("a", (1.0, 0.0)), emb("b", (0.0, 1.0)), emb("c", (0.6, 0.8))])
    before = {o["uuid"]: o for o in wv.objects("Document")}
    run_write(cfg, [emb("a", (0.0, 1.0), text="new"), emb("b", (0.0, 1.0))])
    after = {o["uuid"]: o for o in wv.objects("Document")}
    assert after.keys() == before.keys() and len(after) == 3
    a = after[object_uuid("a", "v1")]
    assert a["properties"]["content_hash"] == "hash-new" and a["vectors"] == {"v1": [0.0, 1.0]}
    assert a["properties"]["n_chunks"] == 1 and isinstance(a["properties"]["n_chunks"], int)
    assert a["created_ms"] == before[object_uuid("a", "v1")]["created_ms"]
    with WeaviateStore(cfg) as store:
        assert store.count("v1") == 3


def test_second_version_keeps_the_first_versions_vector(wv: WeaviateDouble) -> None:
    cfg = wv_config(wv)
    run_write(cfg, [emb("a", (1.0, 0.0)), emb("b", (0.0, 1.0))])
    run_write(cfg, [emb("a", (0.0, 0.0, 1.0), version="v-2"), emb("b", (0.0, 1.0, 0.0), version="v-2")])
    run_write(cfg, [emb("a", (0.0, 0.5, 0.5), version="v-2")])  # re-embed only version B
    objects = {o["uuid"]: o for o in wv.objects("Document")}
    assert objects[object_uuid("a", "v1")]["vectors"] == {"v1": [1.0, 0.0]}
    assert objects[object_uuid("a", "v-2")]["vectors"] == {"v_2": [0.0, 0.5, 0.5]}
    assert set(wv.schema("Document")["vectorConfig"]) == {"v1", "v_2"}
    with WeaviateStore(cfg) as store:
        v1 = store.search("v1", [1.0, 0.0], 5)
        v2 = store.search("v-2", [0.0, 1.0, 0.0], 5)
    assert [(h.id, h.model_version) for h in v1] == [("a", "v1"), ("b", "v1")]
    assert [(h.id, h.model_version) for h in v2] == [("b", "v-2"), ("a", "v-2")]
    assert v2[1].score == pytest.approx(0.5**0.5, abs=1e-6)  # cosine in v-2's own space


def test_rejected_object_is_dead_lettered_with_reason_and_the_rest_written(
    wv: WeaviateDouble, tmp_path: Path
) -> None:
    cfg = wv_config(wv, batch_size=10)
    letters = dead_letters(cfg, [emb("a", (1.0, 0.0)), emb("bad", (0.0, 1.0), text=f"x {REJECT_MARKER}"),
                                 emb("c", (0.6, 0.8))], tmp_path)
    assert [(d["doc_id"], d["stage"], d["error_type"], d["retryable"]) for d in letters] == [
        ("bad", "write", "WeaviateObjectRejected", False)]
    assert "fault injection" in letters[0]["message"] and letters[0]["model_version"] == "v1"
    assert json.loads(letters[0]["payload"])["text"] == f"x {REJECT_MARKER}"
    assert letters[0]["extra"] == {"object_uuid": object_uuid("bad", "v1")}
    with WeaviateStore(cfg) as store:
        assert store.existing_hashes("v1").keys() == {"a", "c"}


def test_batch_where_every_object_fails_dead_letters_each(wv: WeaviateDouble, tmp_path: Path) -> None:
    # weaviate-client raises instead of returning errors when no object of a batch succeeds
    cfg = wv_config(wv, batch_size=10)
    run_write(cfg, [emb("a", (1.0, 0.0))])
    letters = dead_letters(cfg, [emb("x", (1.0, 0.0, 0.0)), emb("y", (0.0, 1.0, 0.0))], tmp_path)
    assert sorted((d["doc_id"], d["retryable"]) for d in letters) == [("x", False), ("y", False)]
    assert all("length 3" in d["message"] for d in letters)  # the dimension of v1 is fixed at 2


def test_failed_batch_rpc_dead_letters_the_flush_as_retryable(wv: WeaviateDouble, tmp_path: Path) -> None:
    wv.fail_next_batch(grpc.StatusCode.INTERNAL)
    letters = dead_letters(wv_config(wv, batch_size=10), [emb("a", (1.0, 0.0)), emb("b", (0.0, 1.0))],
                           tmp_path)
    assert sorted((d["doc_id"], d["error_type"], d["retryable"]) for d in letters) == [
        ("a", "WeaviateBatchError", True), ("b", "WeaviateBatchError", True)]
    with WeaviateStore(wv_config(wv)) as store:
        assert store.count("v1") == 0


def test_empty_upsert_sends_nothing(wv: WeaviateDouble) -> None:
    with WeaviateStore(wv_config(wv)) as store:
        assert store.upsert([]) == {}
        assert store.count("v1") == 0 and store.existing_hashes("v1") == {}
        assert store.search("v1", [1.0], 3) == []
    assert wv.calls["grpc BatchObjects"] == 0 and wv.calls["POST /v1/schema"] == 0


def test_query_errors_are_mapped_to_terminal_errors_naming_the_version(wv: WeaviateDouble) -> None:
    run_write(wv_config(wv), [emb("a", (1.0, 0.0))])
    with WeaviateStore(wv_config(wv)) as store, pytest.raises(TerminalError, match="version 'v1'"):
        store.search("v1", [1.0, 0.0, 0.0], 3)  # wrong dimension for v1's space


def test_setup_creates_collection_with_one_named_vector_per_version(wv: WeaviateDouble) -> None:
    cfg = wv_config(wv, versions=("minilm-l6-v2", "te3-small", "3large"))
    with WeaviateStore(cfg) as store:
        store.ensure_schema(cfg.versions)
        cols = store._client.collections.use("Document").config.get()  # parses the server's schema
    assert set(cols.vector_config) == {"minilm_l6_v2", "te3_small", "v_3large"}
    assert vector_name("3large") == "v_3large"
    props = {p["name"]: p for p in wv.schema("Document")["properties"]}
    assert props["doc_id"]["tokenization"] == "field" and props["n_chunks"]["dataType"] == ["int"]
    assert props["text"]["indexFilterable"] is False and props["metadata"]["indexSearchable"] is False


def test_new_version_on_old_server_raises_config_error_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with WeaviateDouble(version="1.30.2") as double:
        monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", double.pypi_url)
        run_write(wv_config(double), [emb("a", (1.0, 0.0))])
        with WeaviateStore(wv_config(double)) as store, pytest.raises(ConfigError) as err:
            store.ensure_schema(["v1", "v2"])
    assert "1.31" in str(err.value) and "sink.weaviate.collection" in str(err.value)


def test_colliding_version_names_and_bad_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="same Weaviate named vector"):
        WeaviateSinkConfig(versions=("a-b", "a.b"))
    with pytest.raises(ConfigError, match="http"):
        WeaviateSinkConfig(url="localhost:8080")


def test_server_older_than_1_27_and_wrong_api_key_fail_at_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    with WeaviateDouble(version="1.26.0") as old:
        monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", old.pypi_url)
        with pytest.raises(TransientError, match="1.27"):
            WeaviateStore(wv_config(old))
    with WeaviateDouble(api_key="s3cret") as secured:
        monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", secured.pypi_url)
        with pytest.raises(TransientError, match="api_key"):
            WeaviateStore(wv_config(secured, api_key="wrong"))
        run_write(wv_config(secured, api_key="s3cret"), [emb("a", (1.0, 0.0))])
        assert len(secured.objects("Document")) == 1


def test_sink_config_builds_weaviate_config_from_settings(make_settings: SettingsFactory) -> None:
    weaviate = {"url": "https://wv.example:8443", "grpc_port": 50052, "collection": "Listings",
                "api_key": "s3cret-key"}
    settings = make_settings({"sink": {"kind": "weaviate", "batch_size": 7, "weaviate": weaviate}})
    cfg = sink_config(settings)
    assert isinstance(cfg, WeaviateSinkConfig)
    assert (cfg.url, cfg.grpc_port, cfg.collection, cfg.api_key, cfg.batch_size) == (
        "https://wv.example:8443", 50052, "Listings", "s3cret-key", 7)
    assert cfg.versions == ("minilm-l6-v2", "te3-small") and "s3cret" not in repr(cfg)


def test_whole_pipeline_writes_to_weaviate_and_reruns_skip_unchanged(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer, wv: WeaviateDouble
) -> None:
    # Every document goes to the API tier, A/B split over two versions: two named vectors,
    # and no local model to load (that keeps this test fast).
    models = [{"version": v, "model": "fake-embed", "price_per_million_tokens": 2.0, "traffic_weight": 0.5}
              for v in ("fake-a", "fake-b")]
    settings = make_settings({
        **api_overrides(fake_api, models=models),
        "routing": {"api_threshold": 0.0, "mode": "exclusive"},
        "sink": {"kind": "weaviate", "weaviate": {"url": wv.url, "grpc_port": wv.grpc_port}},
    })
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(12))
    api = ResolvedApi(fake_api.base_url, "test", "fake")
    first = run_pipeline(PipelineSpec(settings, str(src), "r1", None, api))
    written = {k: n for k, n in first.counters.items() if k.startswith("written.")}
    assert sum(written.values()) == 12 and written.keys() == {"written.fake-a", "written.fake-b"}

    versions = ["minilm-l6-v2", "fake-a", "fake-b"]
    with WeaviateStore(WeaviateSinkConfig.from_settings(settings.sink, versions)) as raw:
        hashes = raw.existing_hashes_by_version(versions)
    assert {v: len(h) for v, h in hashes.items()} == {
        "minilm-l6-v2": 0, "fake-a": written["written.fake-a"], "fake-b": written["written.fake-b"]}
    with open_store(settings) as store:
        assert store.count("fake-a") + store.count("fake-b") == 12
    objects = wv.objects("Document")
    assert {o["properties"]["tier"] for o in objects} == {"api"} and len(objects) == 12
    assert {next(iter(o["vectors"])) for o in objects} == {"fake_a", "fake_b"}
    assert all(o["properties"]["cost_usd"] > 0 for o in objects)

    billed = fake_api.stats().billed_tokens_total
    second = run_pipeline(PipelineSpec(settings, str(src), "r2", None, api))  # the join reads the store
    assert not any(n for k, n in second.counters.items() if k.startswith("written."))
    assert second.counters["stored_hashes_read"] == 12 and second.counters["skipped_unchanged"] == 12
    assert fake_api.stats().billed_tokens_total == billed  # unchanged documents cost nothing
    assert len(wv.objects("Document")) == 12


def test_whole_pipeline_into_weaviate_reports_written_documents_and_progress(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer, wv: WeaviateDouble
) -> None:
    from beam_pipeline.progress import read_progress

    settings = make_settings({
        **api_overrides(fake_api),
        # every document to the API tier only: no local model to load
        "routing": {"api_threshold": 0.0, "mode": "exclusive"},
        "sink": {"kind": "weaviate", "weaviate": {"url": wv.url, "grpc_port": wv.grpc_port}},
        "telemetry": {"progress_dir": str(tmp_path / "progress")},
    })
    src = write_jsonl(tmp_path / "docs.jsonl", [*corpus(5), "{bad json"])
    outcome = run_pipeline(PipelineSpec(settings, str(src), "r-wv", None,
                                        ResolvedApi(fake_api.base_url, "test", "fake")))
    assert outcome.counters["documents.embedded.api"] == 5  # the same metric the LanceDB writer records
    progress = read_progress(str(tmp_path / "progress" / "tierembed-progress" / "r-wv"))
    assert (progress.written, progress.dead_lettered) == (5, 1)


@pytest.mark.parametrize("backend", ["lancedb", "weaviate"])
def test_a_document_no_store_can_encode_is_dead_lettered_alone_and_its_batch_is_written(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone surrogate in an id or in metadata, or a NaN vector, used to fail the whole
    flush (every good document of the batch dead-lettered with it)."""
    bad_id = emb("b\ud800", (0.0, 1.0))
    bad_meta = EmbeddedDocument(Document("m", "t", "s:2", '{"k": "\udc80"}', "hash-m"), Tier.LOCAL, "v1",
                                "m", (0.6, 0.8), 1, 3)
    nan = emb("n", (float("nan"), 1.0))
    docs = [emb("a", (1.0, 0.0), "alpha"), bad_id, bad_meta, nan, emb("c", (0.6, 0.8), "gamma")]
    with contextlib.ExitStack() as stack:
        if backend == "lancedb":
            cfg: Any = LanceDBSinkConfig(str(tmp_path / "db"), batch_size=10)
            store_of: OpenStore = lambda c: contextlib.nullcontext(LanceDBStore(c))  # noqa: E731
        else:
            double = stack.enter_context(WeaviateDouble())
            monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", double.pypi_url)
            cfg, store_of = wv_config(double, batch_size=10), WeaviateStore
        letters = dead_letters(cfg, docs, tmp_path)
        with store_of(cfg) as store:
            assert store.existing_hashes("v1") == {"a": "hash-alpha", "c": "hash-gamma"}
    assert sorted((d["doc_id"], d["error_type"], d["retryable"]) for d in letters) == [
        ("b\ud800", "UnstorableDocument", False), ("m", "UnstorableDocument", False),
        ("n", "UnstorableDocument", False)]
    reasons = {d["doc_id"]: d["message"] for d in letters}
    assert "id is not valid Unicode" in reasons["b\ud800"] and "metadata" in reasons["m"]
    assert "NaN" in reasons["n"]


def test_a_store_that_dies_mid_run_makes_the_run_partial_and_replay_completes_it(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer, wv: WeaviateDouble
) -> None:
    """The issue: Weaviate killed mid-run, 1,200 of 2,000 dead-lettered, exit 0, the flow run
    Completed. Nothing was lost and replay finished the job: that stays."""
    from flows.embed import RunIncomplete, flow_state, run_embedding
    from flows.replay import dead_letter_files, replay_set_lines, select_for_replay

    settings = make_settings({
        **api_overrides(fake_api),
        "routing": {"api_threshold": 0.0, "mode": "exclusive"},  # every document to the API tier only
        "sink": {"kind": "weaviate", "batch_size": 2,
                 "weaviate": {"url": wv.url, "grpc_port": wv.grpc_port}},
    })
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(12))
    wv.fail_next_batch(grpc.StatusCode.INTERNAL, times=4)  # the store fails its next 4 batches
    first = run_embedding(settings, str(src), emit=lambda **_: None)
    assert first.accounting_ok() and dict(first.dead_letters_by_stage) == {"write": 8}
    assert first.status == "partial"
    assert "8 of 12 targets dead-lettered by write: 8" in first.status_reasons[0]
    state = flow_state(first)
    assert state.is_failed() and state.name == "Partial" and "tierembed replay" in (state.message or "")
    incomplete = state.result(raise_on_failure=False)
    assert isinstance(incomplete, RunIncomplete) and incomplete.report["status"] == "partial"

    letters = [line for f in dead_letter_files(Path(first.dead_letter_path).parent)
               for line in f.read_text().splitlines()]
    chosen = select_for_replay(letters, settings.input)
    replay_src = tmp_path / "again.replay.jsonl"
    replay_src.write_text("\n".join(replay_set_lines(chosen)) + "\n")
    second = run_embedding(settings, str(replay_src), emit=lambda **_: None)
    assert second.status == "completed" and second.written == 8 and flow_state(second) == second.to_dict()
    assert len(wv.objects("Document")) == 12
    assert {o["properties"]["source"].rsplit(":", 1)[0] for o in wv.objects("Document")} == {str(src)}
