"""The local tier's hot loop: every document ends exactly once, finished or failed."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from beam_pipeline.local_batches import BucketedEncoder, Failed, Finished
from tiering.chunking import aggregate_vectors

DIM = 8


class _Model:
    """Chunks of at most 10 words; a chunk's vector is a pure function of its text; a batch
    that holds a 'poison' chunk fails as a whole, and so does that chunk alone."""

    max_tokens = 12
    batch_size = 4  # LocalModel protocol; the tests pass their own batch size

    def __init__(self) -> None:
        self.calls: list[int] = []

    def chunk_many(self, texts: list[str]) -> list[list[tuple[str, int]]]:
        out = []
        for text in texts:
            words = text.split()
            out.append([(" ".join(words[i:i + 10]), len(words[i:i + 10]) + 2)
                        for i in range(0, len(words), 10)])
        return out

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        if any("poison" in t for t in texts):
            raise ValueError("poison")
        return np.stack([_vector(t) for t in texts])


def _vector(text: str) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(text)) % 2**32)
    v = rng.normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@given(docs=st.lists(st.tuples(st.integers(1, 35), st.booleans()), max_size=60),
       batch_size=st.integers(1, 9), admit=st.integers(1, 20))
@settings(max_examples=120, deadline=None)
def test_every_document_ends_once_with_the_mean_of_its_chunk_vectors(
    docs: list[tuple[int, bool]], batch_size: int, admit: int
) -> None:
    model = _Model()
    encoder: BucketedEncoder[int] = BucketedEncoder(model, batch_size, admit)
    texts = [" ".join(f"w{k}-{i}" if not (poison and k == n // 2) else "poison" for k in range(n))
             for i, (n, poison) in enumerate(docs)]
    results = []
    for i, text in enumerate(texts):
        results += encoder.add(i, text)
        assert encoder.pending < admit + batch_size  # bounded by the buckets, not the corpus
    results += encoder.flush()
    assert sorted(r.key for r in results) == list(range(len(docs)))  # each exactly once
    assert all(size <= batch_size for size in model.calls)
    for r in results:
        poisoned = docs[r.key][1]
        if isinstance(r, Failed):
            assert poisoned and isinstance(r.error, ValueError) and "poison" in r.traceback
            continue
        assert isinstance(r, Finished) and not poisoned
        chunks = [c for c, _ in model.chunk_many([texts[r.key]])[0]]
        assert r.n_chunks == len(chunks)
        assert np.allclose(r.vector, aggregate_vectors(np.stack([_vector(c) for c in chunks])), atol=1e-6)
    assert encoder.pending == 0
