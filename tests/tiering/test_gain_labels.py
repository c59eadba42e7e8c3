"""tiering.gain_labels: hand-label parsing, the document sample, and gain labels from two
embedders (fast, pure: bag-of-words embedders stand in for the tiers)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from tiering.documents import Document
from tiering.gain_labels import (
    FloatMatrix,
    GainLabel,
    Query,
    derive_gain_labels,
    discounted_rank,
    parse_target,
    render_gain_summary,
    sample_documents,
)

# ---------------------------------------------------------------------- hand labels


@pytest.mark.parametrize(
    ("value", "positive", "target"),
    [(1, None, 1.0), ("0", None, 0.0), (True, None, 1.0), ("High", None, 1.0), ("low", None, 0.0),
     ("0.25", None, 0.25), (0.7, None, 0.7), ("premium", "premium", 1.0), ("standard", "premium", 0.0)],
)
def test_parse_target(value: object, positive: str | None, target: float) -> None:
    assert parse_target(value, positive) == target


@pytest.mark.parametrize("value", [None, "maybe", 1.5, -0.1, float("nan"), "2", "nan", [1]])
def test_parse_target_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_target(value)


def test_parse_target_unknown_word_suggests_positive() -> None:
    with pytest.raises(ValueError, match="--positive 'gold'"):
        parse_target("gold")


def test_parse_target_missing_value_is_rejected_even_with_positive() -> None:
    with pytest.raises(ValueError, match="no 'label' or 'target'"):
        parse_target(None, "premium")


# ------------------------------------------------------------------------- sampling


def test_sample_keeps_judged_documents_and_fills_stably() -> None:
    docs = [Document(f"d{i}", "t", "s") for i in range(50)]
    queries = [Query("q", "t", (("d40", 1.0), ("d41", 1.0)))]
    sample = sample_documents(docs, queries, 10)
    assert [d.id for d in sample[:2]] == ["d40", "d41"] and len(sample) == 10
    again = sample_documents(list(reversed(docs)), queries, 10)
    assert again[2:] == sample[2:]  # the fill does not depend on the input order


def test_sample_smaller_than_the_judged_set_keeps_only_judged_documents() -> None:
    docs = [Document(f"d{i}", "t", "s") for i in range(5)]
    queries = [Query("q", "t", (("d1", 1.0), ("d3", 1.0), ("d4", 1.0)))]
    assert [d.id for d in sample_documents(docs, queries, 2)] == ["d1", "d3"]


# ---------------------------------------------------------------------- gain labels


class KeywordEmbedder:
    """A bag-of-words embedder that only sees the words it knows (a weaker model)."""

    def __init__(self, vocabulary: Sequence[str]) -> None:
        self.vocabulary = list(vocabulary)

    def _embed(self, texts: Sequence[str]) -> FloatMatrix:
        rows = np.array([[t.split().count(w) for w in self.vocabulary] + [1e-3] for t in texts], np.float32)
        unit: FloatMatrix = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return unit

    embed_documents = _embed
    embed_queries = _embed


def test_discounted_rank_is_one_at_the_top_and_falls() -> None:
    assert discounted_rank(1) == 1.0
    assert discounted_rank(3) == pytest.approx(0.5)
    assert discounted_rank(2) > discounted_rank(2.5) > discounted_rank(10)


def test_gain_labels_mark_documents_the_premium_tier_ranks_better() -> None:
    # Documents "a*" are found by their word under both tiers; "b*" only under the premium
    # tier, whose vocabulary also knows the b-words.
    a_words, b_words = [f"alpha{i}" for i in range(5)], [f"beta{i}" for i in range(5)]
    docs = [Document(f"a{i}", f"{w} common", "t") for i, w in enumerate(a_words)]
    docs += [Document(f"b{i}", f"{w} common", "t") for i, w in enumerate(b_words)]
    queries = [Query(f"q{d.id}", d.text.split()[0], ((d.id, 1.0),)) for d in docs]
    local = KeywordEmbedder(a_words)
    api = KeywordEmbedder(a_words + b_words)
    labels = {x.doc_id: x for x in derive_gain_labels(docs, queries, local, api)}
    assert {k: v.target for k, v in labels.items()} == {**{f"a{i}": 0.0 for i in range(5)},
                                                        **{f"b{i}": 1.0 for i in range(5)}}
    assert labels["b0"].mean_rank_api == 1 and labels["b0"].mean_rank_local > 1
    assert labels["b0"].mean_gain > 0 and labels["a0"].mean_gain == 0


def test_tied_documents_share_their_average_rank() -> None:
    # The local tier knows no word, so all four documents tie: each gets rank (4 + 1) / 2.
    docs = [Document(f"d{i}", f"w{i}", "t") for i in range(4)]
    queries = [Query("q", "w2", (("d2", 1.0),))]
    (label,) = derive_gain_labels(docs, queries, KeywordEmbedder([]), KeywordEmbedder(["w2"]))
    assert label.mean_rank_local == 2.5 and label.mean_rank_api == 1.0
    assert label.mean_gain == pytest.approx(1.0 - 1.0 / math.log2(3.5))


def test_gain_target_is_the_grade_weighted_share_of_wins() -> None:
    docs = [Document("x", "alpha", "t"), Document("y", "beta", "t"), Document("z", "gamma", "t")]
    # Premium finds "y" for q1 (grade 3) but the local tier does better for q2 (grade 1).
    queries = [Query("q1", "beta", (("y", 3.0),)), Query("q2", "gamma", (("z", 1.0),))]
    local = KeywordEmbedder(["gamma"])
    api = KeywordEmbedder(["beta"])
    labels = {x.doc_id: x.target for x in derive_gain_labels(docs, queries, local, api)}
    assert labels == {"y": 1.0, "z": 0.0}
    both = [Query("q", "beta", (("y", 3.0),)), Query("r", "beta gamma", (("y", 1.0),))]
    (label,) = derive_gain_labels(docs, both, local, api)
    assert label.queries == 2 and 0.0 <= label.target <= 1.0


def test_gain_not_above_min_gain_is_not_a_win() -> None:
    docs = [Document(f"d{i}", f"w{i}", "t") for i in range(4)]
    queries = [Query("q", "w2", (("d2", 1.0),))]
    local, api = KeywordEmbedder([]), KeywordEmbedder(["w2"])
    (label,) = derive_gain_labels(docs, queries, local, api)
    assert label.target == 1.0 and label.mean_gain > 0
    (strict,) = derive_gain_labels(docs, queries, local, api, min_gain=label.mean_gain)
    assert strict.target == 0.0 and strict.mean_gain == label.mean_gain


def test_judged_documents_outside_the_sample_get_no_label() -> None:
    docs = [Document("x", "alpha", "t"), Document("y", "beta", "t")]
    queries = [Query("q", "beta", (("y", 1.0), ("missing", 2.0)))]
    labels = derive_gain_labels(docs, queries, KeywordEmbedder(["alpha"]), KeywordEmbedder(["beta"]))
    assert [x.doc_id for x in labels] == ["y"]


def test_gain_summary_counts_wins_and_the_mean_gain() -> None:
    labels = [GainLabel("a", 1.0, 0.25, 1, 3.0, 1.0), GainLabel("b", 0.0, -0.05, 2, 1.0, 2.0)]
    assert render_gain_summary(labels, 3) == (
        "derived gain labels for 2 documents from 3 training queries: 1 improve the fused index with "
        "a premium vector (target >= 0.5), 1 not; mean gain +0.1000")
    assert render_gain_summary([], 0).endswith("0 not; mean gain +0.0000")


def test_fused_gain_rewards_lifting_a_relevant_document_and_demoting_an_irrelevant_one() -> None:
    import numpy as np

    from tiering.gain_labels import fused_gain_labels, fused_gains

    # one query, 20 documents; local z-scores put irrelevant d0 first and relevant d5 at 12th
    z_local = np.linspace(3.0, -1.0, 20)[None, :].copy()
    z_local[0, 5] = z_local[0, 11] - 0.01
    z_premium = z_local.copy()
    z_premium[0, 5] = 6.0   # premium knows d5 answers the query
    z_premium[0, 0] = -3.0  # and that d0 does not
    grades = np.zeros((1, 20))
    grades[0, 5] = 1.0
    gains, touched = fused_gains(z_local, z_premium, grades)
    assert gains[5] > 0 and touched[5] == 1       # d5 enters the top 10
    assert gains[0] == 0.0  # d5 stays outside the top 10: demoting d0 alone changes nothing
    assert (gains[[1, 2, 3, 4]] == 0).all()       # same scores in both spaces: no change
    labels = fused_gain_labels([f"d{i}" for i in range(20)], gains, touched)
    assert [x.doc_id for x in labels if x.target == 1.0] == ["d5"]
    # with d5 already in the top 10, pushing irrelevant d0 out lifts d5: d0 gains too
    z_local[0, 5] = 2.0
    gains, _ = fused_gains(z_local, z_premium, grades)
    assert gains[0] > 0
