"""Skip-unchanged reads the store in pages, never into one mapping (issue 13).

The store here holds 60,000 rows of one version; the test sets a memory cap for reading them:
a quarter of what one id -> hash dict of the same rows takes (traced Python allocations).
Streaming pages of 1,000 rows stays far below it; gathering the rows (the old
``existing_hashes`` dict) does not, so the test fails if the reader ever gathers them. Then
the pipeline's join (SkipUnchanged) marks exactly the unchanged documents of a small run
against that large store.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig
from beam_pipeline.skip_unchanged import ReadStoredHashes, SkipUnchanged
from store.stored_hashes import lancedb_hash_pages
from tiering.documents import Document, ScoredDocument

ROWS = 60_000
VERSION = "v1"


def _store(tmp_path: Path) -> LanceDBSinkConfig:
    import lancedb

    cfg = LanceDBSinkConfig(str(tmp_path / "store"))
    ids = [f"doc-{i:06d}" for i in range(ROWS)]
    table = pa.table({
        "id": ids,
        "content_hash": [f"hash-{i:06d}-" + "x" * 40 for i in range(ROWS)],
        "vector": pa.array([[0.0, 1.0]] * ROWS, type=pa.list_(pa.float32(), 2)),
    })
    lancedb.connect(cfg.uri).create_table(cfg.table_name(VERSION), data=table)
    return cfg


def _peak(fn) -> tuple[int, object]:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_the_store_is_read_in_pages_below_a_cap_a_gathered_dict_exceeds(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    name = cfg.table_name(VERSION)

    def stream() -> int:
        return sum(len(page) for page in lancedb_hash_pages(cfg.uri, name, VERSION, page_rows=1_000))

    def gather() -> int:
        pages = lancedb_hash_pages(cfg.uri, name, VERSION, page_rows=1_000)
        rows = {r.doc_id: r.content_hash for page in pages for r in page}
        return len(rows)

    gathered_peak, gathered = _peak(gather)
    streamed_peak, streamed = _peak(stream)
    assert streamed == gathered == ROWS
    cap = gathered_peak // 4
    assert streamed_peak < cap, f"reading {ROWS} rows peaked at {streamed_peak} B, over the cap {cap} B"


def test_the_join_marks_exactly_the_unchanged_documents_against_a_large_store(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    def doc(i: int, content_hash: str) -> ScoredDocument:
        return ScoredDocument(Document(f"doc-{i:06d}", f"text {i}", "src", hash=content_hash), 0.5, 3)

    same = doc(5, "hash-000005-" + "x" * 40)  # the hash the store holds for it
    changed = doc(59_999, "another hash")  # stored, from another text
    new = doc(123_456, "hash-123456-" + "x" * 40)  # never stored
    with TestPipeline() as p:
        stored = p | ReadStoredHashes(cfg, [VERSION])
        out = (p | beam.Create([same, changed, new]).with_output_types(ScoredDocument)
               | SkipUnchanged(stored)
               | beam.Map(lambda s: (s.document.id, s.unchanged)))
        assert_that(out, equal_to([("doc-000005", (VERSION,)), ("doc-059999", ()), ("doc-123456", ())]))
