from __future__ import annotations

from pathlib import Path

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.sinks import LanceDBSinkConfig, WriteEmbeddings
from beam_pipeline.sinks.lancedb_sink import LanceDBStore
from tiering.documents import Document, EmbeddedDocument, Tier


def emb(doc_id: str, vec: tuple[float, ...], text: str = "t", version: str = "v1") -> EmbeddedDocument:
    return EmbeddedDocument(Document(doc_id, text, "s:1", "{}", f"hash-{text}"), Tier.LOCAL, version,
                            "m", vec, 1, 3)


def run_write(cfg: LanceDBSinkConfig, docs: list[EmbeddedDocument]) -> None:
    with TestPipeline() as p:
        out = p | beam.Create(docs) | WriteEmbeddings(cfg)
        assert_that(out["dead_letters"] | beam.Map(lambda d: d.doc_id), equal_to([]), label="dl")


def test_upsert_by_id_replaces_and_keeps_one_row_per_document(tmp_path: Path) -> None:
    cfg = LanceDBSinkConfig(str(tmp_path / "db"), batch_size=2)
    run_write(cfg, [emb("a", (1.0, 0.0)), emb("b", (0.0, 1.0)), emb("c", (0.6, 0.8))])
    run_write(cfg, [emb("a", (0.0, 1.0), text="new")])
    store = LanceDBStore(cfg)
    assert store.count("v1") == 3
    assert store.existing_hashes("v1")["a"] == "hash-new"
    assert store.search("v1", [0.0, 1.0], 2)[0].id in {"a", "b"}


def test_each_model_version_gets_its_own_table(tmp_path: Path) -> None:
    cfg = LanceDBSinkConfig(str(tmp_path / "db"))
    run_write(cfg, [emb("a", (1.0, 0.0)), emb("a", (1.0, 0.0, 0.0), version="v-2")])
    store = LanceDBStore(cfg)
    assert store.versions() == ["v1", "v_2"]
    assert store.count("v1") == 1 and store.count("v-2") == 1


def test_dimension_change_under_same_version_dead_letters_each_object(tmp_path: Path) -> None:
    cfg = LanceDBSinkConfig(str(tmp_path / "db"))
    run_write(cfg, [emb("a", (1.0, 0.0))])
    with TestPipeline() as p:
        out = p | beam.Create([emb("x", (1.0, 0.0, 0.0)), emb("y", (0.0, 1.0, 0.0))]) | WriteEmbeddings(cfg)
        assert_that(out["dead_letters"] | beam.Map(lambda d: (d.doc_id, d.stage, "new version" in d.message)),
                    equal_to([("x", "write", True), ("y", "write", True)]))
