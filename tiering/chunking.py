"""Token estimates, chunking of long documents, and aggregation of chunk vectors.

A document longer than a model's input limit is split into chunks on word boundaries
(preferring paragraph and sentence ends), each chunk is embedded, and the document vector
is the mean of the L2-normalized chunk vectors, renormalized. The estimate is deliberately
conservative (it over-counts for English) so a chunk sized by it fits the model; backends
that have the real tokenizer re-check and split further (see ``split_to_fit``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "estimate_tokens",
    "token_upper_bound",
    "SPECIAL_TOKENS",
    "chunk_text",
    "split_to_fit",
    "aggregate_vectors",
    "AGGREGATION",
]

AGGREGATION = "mean-of-normalized-renormalized"
_PIECE_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_WORD_SPAN_RE = re.compile(r"\S+")
_SENTENCE_END = (".", "!", "?", ";", ":")


def estimate_tokens(text: str) -> int:
    """Conservative token count: one per punctuation mark, 1 + len//7 per word piece."""
    total = 0
    for piece in _PIECE_RE.findall(text):
        total += 1 + len(piece) // 7
    return max(total, 1)


SPECIAL_TOKENS = 2
"""Tokens a model may add to every input on top of its text ([CLS]/[SEP], <s>/</s>)."""


def token_upper_bound(text: str) -> int:
    """An upper bound of the tokens any tokenizer bills for ``text``: its UTF-8 bytes plus
    :data:`SPECIAL_TOKENS`. Byte-level BPE (OpenAI's tokenizers) never makes more tokens
    than bytes; WordPiece and SentencePiece pieces cover at least one character (one or
    more bytes) each, plus the special tokens some servers count. Budgets use this bound
    where the estimate could be passed (codes and identifiers, other scripts)."""
    return len(text.encode("utf-8")) + SPECIAL_TOKENS


def chunk_text(text: str, max_tokens: int, count: Callable[[str], int] = estimate_tokens) -> list[str]:
    """Split ``text`` into chunks whose ``count`` stays within ``max_tokens``.

    Greedy packing of whitespace-separated words; a chunk is closed early at a sentence end
    once it is at least half full, so chunks follow the text's own boundaries.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if count(text) <= max_tokens:
        return [text]
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for word in _WORD_SPAN_RE.findall(text):
        cost = count(word)
        if cost > max_tokens:  # one giant "word" (a URL, base64): cut it by characters
            if current:
                chunks.append(" ".join(current))
                current, used = [], 0
            chunks.extend(_cut_word(word, max_tokens, count))
            continue
        if used + cost > max_tokens and current:
            chunks.append(" ".join(current))
            current, used = [], 0
        current.append(word)
        used += cost
        if used >= max_tokens // 2 and word.endswith(_SENTENCE_END) and used >= max_tokens * 0.8:
            chunks.append(" ".join(current))
            current, used = [], 0
    if current:
        chunks.append(" ".join(current))
    return chunks


def _cut_word(word: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    pieces: list[str] = []
    step = max(1, len(word) // max(1, count(word) // max_tokens + 1))
    start = 0
    while start < len(word):
        end = min(len(word), start + step)
        while end - start > 1 and count(word[start:end]) > max_tokens:
            end = start + (end - start) // 2
        pieces.append(word[start:end])
        start = end
    return pieces


def split_to_fit(chunks: Sequence[str], max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """Re-split chunks with an exact counter (a real tokenizer) until each one fits."""
    out: list[str] = []
    for chunk in chunks:
        if count(chunk) <= max_tokens:
            out.append(chunk)
        else:
            out.extend(chunk_text(chunk, max_tokens, count))
    return out


def aggregate_vectors(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Mean of the L2-normalized rows, renormalized (one row is just normalized)."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.shape[0] == 0:
        raise ValueError("cannot aggregate zero vectors")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    unit = arr / np.where(norms == 0, 1.0, norms)
    mean = unit.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)
