from __future__ import annotations

import numpy as np

from tiering.chunking import aggregate_vectors, chunk_text, estimate_tokens, split_to_fit


def test_short_text_is_one_chunk() -> None:
    assert chunk_text("a short text", 50) == ["a short text"]


def test_long_text_chunks_fit_and_keep_every_word() -> None:
    text = " ".join(f"word{i} is here." for i in range(2000))
    chunks = chunk_text(text, 100)
    assert len(chunks) > 10
    assert all(estimate_tokens(c) <= 100 for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_giant_word_is_cut_not_truncated() -> None:
    word = "x" * 5000
    chunks = chunk_text(word, 50)
    assert "".join(chunks) == word
    assert all(estimate_tokens(c) <= 50 for c in chunks)


def test_split_to_fit_uses_exact_counter() -> None:
    def strict(text: str) -> int:
        return len(text.split()) * 3

    out = split_to_fit(["a b c d e f g h"], 9, strict)
    assert all(strict(c) <= 9 for c in out) and " ".join(out).split() == list("abcdefgh")


def test_aggregate_is_renormalized_mean_of_unit_vectors() -> None:
    v = aggregate_vectors([[3.0, 0.0], [0.0, 10.0]])
    assert np.allclose(v, [2**-0.5, 2**-0.5])
    assert np.isclose(np.linalg.norm(aggregate_vectors(np.random.default_rng(0).normal(size=(5, 8)))), 1.0)
