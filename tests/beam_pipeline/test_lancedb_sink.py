from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
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


class _Columns:
    """A LanceDB table that records which columns each read asks for; whole-table reads fail."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.selected: list[list[str]] = []

    def to_arrow(self) -> Any:
        raise AssertionError("existing_hashes materialised the whole table (text and vectors)")

    def search(self, *args: Any, **kw: Any) -> Any:
        query = self._table.search(*args, **kw)
        original = query.select

        def select(columns: list[str]) -> Any:
            self.selected.append(list(columns))
            return original(columns)

        query.select = select
        return query


class _SpyStore(LanceDBStore):
    def __init__(self, cfg: LanceDBSinkConfig) -> None:
        super().__init__(cfg)
        self.spy: _Columns | None = None

    def _open(self, version: str, dim: int | None) -> Any:
        table = super()._open(version, dim)
        self.spy = None if table is None else _Columns(table)
        return self.spy


def test_existing_hashes_reads_only_ids_and_hashes_of_every_row(tmp_path: Path) -> None:
    cfg = LanceDBSinkConfig(str(tmp_path / "db"), batch_size=100)
    LanceDBStore(cfg).upsert([emb(f"d{i}", (1.0, 0.0), text=str(i)) for i in range(25)])  # > 10
    store = _SpyStore(cfg)
    hashes = store.existing_hashes("v1")
    assert hashes == {f"d{i}": f"hash-{i}" for i in range(25)}
    assert store.spy is not None and store.spy.selected == [["id", "content_hash"]]


class _ConflictingTable:
    """merge_insert always fails with lance's conflict wording (message says 'retry')."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.attempts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def merge_insert(self, on: str) -> Any:
        self.attempts += 1
        raise RuntimeError("Retryable commit conflict for version 3: please retry")


class _ConflictStore(LanceDBStore):
    table: _ConflictingTable | None = None

    def _open(self, version: str, dim: int | None) -> Any:
        if self.table is None:
            self.table = _ConflictingTable(super()._open(version, dim))
        return self.table


def test_upsert_does_not_retry_by_error_text_on_top_of_lancedb(tmp_path: Path) -> None:
    store = _ConflictStore(LanceDBSinkConfig(str(tmp_path / "db")))
    with pytest.raises(RuntimeError, match="commit conflict"):
        store.upsert([emb("a", (1.0, 0.0))])
    assert store.table is not None and store.table.attempts == 1  # lancedb's retry is the only layer
