"""Gain labels: where the premium tier pays off, measured on a labelled query set.

``tierembed router train --from-queries`` embeds a sample of documents and the queries
with both tiers, ranks the sample for each query in each tier's own space, and labels
each judged-relevant document with how often the premium tier ranks it better (gain in
discounted rank ``1/log2(1 + rank)``, weighted by relevance grade). The value classifier
then learns to predict those labels. This module holds that arithmetic and the parsing
of hand-written labels (``parse_target``); the embedders arrive through the
:class:`TierEmbedder` protocol, so nothing here loads a model or calls an API.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tiering.ab import stable_unit
from tiering.documents import Document

__all__ = [
    "FloatMatrix",
    "Query",
    "GainLabel",
    "TierEmbedder",
    "parse_target",
    "sample_documents",
    "discounted_rank",
    "derive_gain_labels",
    "fused_gains",
    "fused_gain_labels",
    "render_gain_summary",
]

FloatMatrix = npt.NDArray[np.float32]
_POSITIVE_WORDS = {"1", "true", "yes", "y", "high", "api", "paid", "premium", "positive"}
_NEGATIVE_WORDS = {"0", "false", "no", "n", "low", "local", "cheap", "negative"}
# One judged (query, document) pair: (grade, gain, rank_local, rank_api).
_Row = tuple[float, float, float, float]


# --------------------------------------------------------------------- hand labels


def parse_target(value: object, positive: str | None = None) -> float:
    """A label or target as a number in [0, 1]; raises ValueError saying what is accepted."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if positive is not None and value is not None:
        return 1.0 if str(value).strip() == positive else 0.0
    if value is None:
        raise ValueError("no 'label' or 'target' given")
    if isinstance(value, str):
        number = _word_target(value)
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise ValueError(f"label {value!r} is not a number or a word")
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ValueError(f"target {value!r} is outside [0, 1]")
    return number


def _word_target(value: str) -> float:
    word = value.strip().lower()
    if word in _POSITIVE_WORDS:
        return 1.0
    if word in _NEGATIVE_WORDS:
        return 0.0
    try:
        return float(word)
    except ValueError:
        raise ValueError(
            f"label {value!r} is not 0/1, true/false, high/low or a score in [0, 1]; "
            f"pass --positive {value!r} if it names the high-value class"
        ) from None


# -------------------------------------------------------------------- gain labels


@dataclass(frozen=True, slots=True)
class Query:
    """A query and its relevance judgements: (document id, grade > 0) pairs."""

    id: str
    text: str
    judgements: tuple[tuple[str, float], ...]


class TierEmbedder(Protocol):
    """Embeds documents and queries with one tier; rows are L2-normalized."""

    def embed_documents(self, texts: Sequence[str]) -> FloatMatrix: ...

    def embed_queries(self, texts: Sequence[str]) -> FloatMatrix: ...


@dataclass(frozen=True, slots=True)
class GainLabel:
    """What the premium tier did for one judged document.

    ``target``: grade-weighted share of its queries for which the premium tier ranked it
    better by more than ``min_gain`` in discounted rank; ``mean_gain``: the weighted mean
    of ``1/log2(1 + rank_api) - 1/log2(1 + rank_local)``.
    """

    doc_id: str
    target: float
    mean_gain: float
    queries: int
    mean_rank_local: float
    mean_rank_api: float


def sample_documents(docs: Sequence[Document], queries: Sequence[Query], size: int) -> list[Document]:
    """Judged documents first, then a stable hash-ordered share of the others, up to ``size``."""
    judged = {doc_id for q in queries for doc_id, _ in q.judgements}
    first = [d for d in docs if d.id in judged]
    rest = sorted((d for d in docs if d.id not in judged), key=lambda d: stable_unit(d.id, "router-sample"))
    return (first + rest)[:size]


def _rank(sims: FloatMatrix, i: int) -> float:
    """1-based rank of item ``i`` by similarity; tied items share their average rank (a
    tier that cannot tell documents apart gets no credit for listing one first)."""
    better = int(np.sum(sims > sims[i]))
    tied = int(np.sum(sims == sims[i]))
    return better + (tied + 1) / 2.0


def discounted_rank(rank: float) -> float:
    """The DCG discount of a 1-based rank: ``1/log2(1 + rank)``."""
    return 1.0 / math.log2(1.0 + rank)


def derive_gain_labels(
    docs: Sequence[Document],
    queries: Sequence[Query],
    local: TierEmbedder,
    api: TierEmbedder,
    *,
    min_gain: float = 0.0,
) -> list[GainLabel]:
    """Rank ``docs`` for each query in each tier's own space and label every judged
    document with the premium tier's gain (see :class:`GainLabel`)."""
    index = {d.id: i for i, d in enumerate(docs)}
    texts = [d.text for d in docs]
    d_local, d_api = local.embed_documents(texts), api.embed_documents(texts)
    q_texts = [q.text for q in queries]
    q_local, q_api = local.embed_queries(q_texts), api.embed_queries(q_texts)
    acc: dict[str, list[_Row]] = {}
    for qi, query in enumerate(queries):
        s_local, s_api = d_local @ q_local[qi], d_api @ q_api[qi]
        for doc_id, grade in query.judgements:
            if doc_id in index:
                acc.setdefault(doc_id, []).append(_judged_row(s_local, s_api, index[doc_id], grade))
    return [_gain_label(doc_id, rows, min_gain) for doc_id, rows in acc.items()]


def _judged_row(s_local: FloatMatrix, s_api: FloatMatrix, i: int, grade: float) -> _Row:
    r_local, r_api = _rank(s_local, i), _rank(s_api, i)
    return grade, discounted_rank(r_api) - discounted_rank(r_local), r_local, r_api


def _gain_label(doc_id: str, rows: list[_Row], min_gain: float) -> GainLabel:
    weight = sum(g for g, *_ in rows)
    wins = sum(g for g, gain, *_ in rows if gain > min_gain)
    return GainLabel(
        doc_id=doc_id,
        target=wins / weight,
        mean_gain=sum(g * gain for g, gain, *_ in rows) / weight,
        queries=len(rows),
        mean_rank_local=sum(r for *_, r, _ in rows) / len(rows),
        mean_rank_api=sum(r for *_, r in rows) / len(rows),
    )


def render_gain_summary(labels: Sequence[GainLabel], queries: int) -> str:
    """One line for the CLI: how many judged documents the premium tier ranked better."""
    wins = sum(1 for x in labels if x.target >= 0.5)
    mean = sum(x.mean_gain for x in labels) / len(labels) if labels else 0.0
    return (f"derived gain labels for {len(labels)} documents from {queries} training queries: "
            f"{wins} improve the fused index with a premium vector (target >= 0.5), "
            f"{len(labels) - wins} not; mean gain {mean:+.4f}")


# ------------------------------------------------------------- fused-index gain labels


def _dcg(grades: Sequence[float]) -> float:
    return sum((2.0**g - 1.0) / math.log2(i + 2.0) for i, g in enumerate(grades))


def fused_gains(
    z_local: npt.NDArray[np.float64], z_premium: npt.NDArray[np.float64],
    grades: npt.NDArray[np.float64], k: int = 10,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """What giving one document its premium vector does to the fused index, per document.

    The index is in coverage mode with calibrated fusion (:mod:`tiering.fusion`): every
    document ranks by its local z-score; a document that also gets the premium vector ranks
    by the mean of its two z-scores. For each query (rows of the queries x documents
    arrays; ``grades`` > 0 marks relevant documents) and each document whose change can
    move the top ``k``, the nDCG@k difference between "this document also premium" and
    "all local" is added to that document's gain. Irrelevant documents gain when their
    premium vector pushes them out of the top ``k``; relevant ones when it lifts them in.

    Returns (gain summed over queries, queries where the gain was not zero). nDCG is
    computed here rather than with ir-measures: this is the inner loop of one
    counterfactual per (query, document), thousands per query, where building ir-measures
    runs would dominate; the formula (exponential gain, log2 discount) is ir-measures'.
    """
    n_q, n_d = z_local.shape
    gains, touched = np.zeros(n_d), np.zeros(n_d, dtype=np.int64)
    for qi in range(n_q):
        rel = grades[qi]
        ideal = _dcg(sorted(rel[rel > 0], reverse=True)[:k])
        if ideal <= 0:
            continue
        base = z_local[qi]
        new = (z_local[qi] + z_premium[qi]) / 2.0
        order = np.argsort(-base, kind="stable")
        top = order[: k + 1]
        base_dcg = _dcg(rel[top[:k]])
        kth = base[top[k - 1]] if n_d >= k else -np.inf
        candidates = set(top[:k].tolist()) | set(np.flatnonzero(new > kth).tolist()) | set(
            np.flatnonzero(rel > 0).tolist())
        for d in candidates:
            others = [j for j in top if j != d][:k]
            position = sum(1 for j in others if base[j] > new[d] or (base[j] == new[d] and j < d))
            ranking = (others[:position] + [d] + others[position:])[:k]
            delta = (_dcg(rel[ranking]) - base_dcg) / ideal
            if delta != 0.0:
                gains[d] += delta
                touched[d] += 1
    return gains, touched


def fused_gain_labels(
    doc_ids: Sequence[str], gains: npt.NDArray[np.float64], touched: npt.NDArray[np.int64]
) -> list[GainLabel]:
    """One label per document: target 1 when its premium vector improved the fused index
    over the training queries (summed nDCG@10 gain > 0), else 0."""
    return [GainLabel(doc_id, 1.0 if g > 0 else 0.0, float(g) / max(int(t), 1), int(t), 0.0, 0.0)
            for doc_id, g, t in zip(doc_ids, gains, touched, strict=True)]
