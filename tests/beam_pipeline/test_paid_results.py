"""MarkPaidResults: a document is marked paid exactly when the result cache holds every
chunk of it as its API version would send it; the lookups are batched (one connection per
batch, none of the chunking while the cache holds nothing for the version)."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from beam_pipeline.paid_results import MarkPaidResults, PaidLookup, _MarkPaidFn
from store.result_cache import CacheKey, ResultCache
from tiering.chunking import chunk_text
from tiering.documents import Document, ScoredDocument
from tiering.routing import RoutingPolicy

KEY = CacheKey("te3", "text-embedding-3-small")
POLICY = RoutingPolicy("coverage", 0.5, (), (("minilm", 1.0),), (("te3", 1.0),))
MAX_TOKENS = 32


def _docs(n: int) -> list[ScoredDocument]:
    docs = []
    for i in range(n):
        words = 3 if i % 5 else 60  # every fifth document is long: several chunks
        text = " ".join(f"doc{i}word{j}" for j in range(words))
        docs.append(ScoredDocument(Document(f"d{i}", text, "src"), 0.5, 10))
    return docs


def _run(cache_path: Path, docs: list[ScoredDocument], expected_paid: set[str]) -> None:
    ids = sorted(d.document.id for d in docs)

    def check(out: list[ScoredDocument]) -> None:  # runs inside the pipeline: assert here
        assert sorted(d.document.id for d in out) == ids  # every document, once
        assert {d.document.id for d in out if d.paid} == expected_paid
        assert all(d.paid in ((), ("te3",)) for d in out)

    with TestPipeline() as p:
        marked = p | beam.Create(docs) | MarkPaidResults(str(cache_path), POLICY,
                                                         {"te3": PaidLookup(KEY, MAX_TOKENS)})
        assert_that(marked, check)


def test_exactly_the_documents_with_every_chunk_cached_are_marked(tmp_path: Path) -> None:
    docs = _docs(3 * _MarkPaidFn.BATCH + 7)  # several full batches and a remainder
    cache = ResultCache(tmp_path / "cache.sqlite")
    expected = set()
    for i, doc in enumerate(docs):
        chunks = chunk_text(doc.document.text, MAX_TOKENS)
        if i % 3 == 0:  # all chunks paid
            cache.put_many(KEY, [(c, [0.1, 0.2], 5) for c in chunks], "run-1")
            expected.add(doc.document.id)
        elif i % 3 == 1 and len(chunks) > 1:  # all but the last chunk: not paid
            cache.put_many(KEY, [(c, [0.1, 0.2], 5) for c in chunks[:-1]], "run-1")
    # another model's vectors of the same texts are not this version's
    other = CacheKey("te3", "text-embedding-3-large")
    cache.put_many(other, [(d.document.text, [0.3], 5) for d in docs], "run-1")

    assert 0 < len(expected) < len(docs)
    _run(tmp_path / "cache.sqlite", docs, expected)


def test_nothing_is_marked_while_the_cache_holds_nothing_for_the_version(tmp_path: Path) -> None:
    ResultCache(tmp_path / "cache.sqlite").put_many(CacheKey("old", "m"), [("x", [1.0], 1)], "r")
    _run(tmp_path / "cache.sqlite", _docs(40), set())


def test_holds_all_answers_per_document_and_never_for_an_empty_one(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache.sqlite")
    cache.put_many(KEY, [("a", [1.0], 1), ("b", [1.0], 1)], "r")
    assert cache.holds_all(KEY, [["a", "b"], ["a", "c"], [], ["b"]]) == [True, False, False, True]
    assert cache.has_any(KEY) and not cache.has_any(CacheKey("te3", "other"))
