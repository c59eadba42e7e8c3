"""Two versions compared on their shared documents, and the promotion check on the evidence."""

from __future__ import annotations

import ir_measures
import numpy as np
import pytest
from ir_measures import RR, R, nDCG

from tiering.compare import (
    Evidence,
    compare_versions,
    cost_per_1k,
    judged_queries,
    promotion_check,
    shared_corpus,
)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _space(rng: np.random.Generator, n_docs: int, n_q: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Documents; queries near document ``3 * q`` (plus ``noise``): a version's quality."""
    docs = _unit(rng.normal(size=(n_docs, 16)))
    queries = _unit(docs[[3 * q for q in range(n_q)]] + noise * rng.normal(size=(n_q, 16)))
    return docs, queries


def _independent(doc_ids: list[str], docs: np.ndarray, queries: np.ndarray, qids: list[str],
                 qrels: dict[str, dict[str, int]], k: int = 10) -> dict[str, float]:
    """Cosine ranking scored by ir-measures directly, averaged over ``qids``."""
    scores = queries @ docs.T
    run = [ir_measures.ScoredDoc(q, doc_ids[j], float(scores[i, j])) for i, q in enumerate(qids)
           for j in range(len(doc_ids))]
    judged = [ir_measures.Qrel(q, d, g) for q in qids for d, g in qrels[q].items()]
    agg = ir_measures.calc_aggregate([nDCG @ k, R @ k, RR @ k], judged, run)
    return {str(m): float(v) for m, v in agg.items()}


def test_shared_corpus_keeps_the_intersection_and_counts_what_each_left_out() -> None:
    shared = shared_corpus(["c", "a", "b", "x"], ["b", "c", "y", "z", "w"])
    assert shared.ids == ("b", "c") and shared.left_out == (2, 3)


def test_judged_queries_keep_those_with_a_relevant_shared_document() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"z": 1}, "q3": {"a": 0, "b": 2}, "q4": {"a": 0}}
    assert judged_queries(["q1", "q2", "q3", "q4", "q5"], qrels, ["a", "b"]) == ("q1", "q3")


def test_cost_per_1k_documents() -> None:
    assert cost_per_1k(0.05, 250) == pytest.approx(0.2) and cost_per_1k(0.0, 0) == 0.0


def test_compare_matches_ir_measures_on_each_version_alone_and_the_paired_difference() -> None:
    rng = np.random.default_rng(7)
    n_docs, n_q = 90, 30
    ids = [f"d{i:03d}" for i in range(n_docs)]
    good_docs, good_q = _space(rng, n_docs, n_q, 0.3)
    bad_docs, bad_q = _space(rng, n_docs, n_q, 2.0)
    qids = [f"q{i}" for i in range(n_q)] + ["q-unshared"]
    qrels = {f"q{i}": {ids[3 * i]: 1, ids[3 * i + 1]: 0} for i in range(n_q)} | {"q-unshared": {"zz": 1}}
    pad = np.zeros((1, 16), np.float32) + 0.25  # the left-out query's vector (any)
    shared = shared_corpus(ids, ids + ["extra"])
    result = compare_versions(("bad", bad_docs, np.vstack([bad_q, pad])),
                              ("good", good_docs, np.vstack([good_q, pad])), shared, qids, qrels,
                              held=(90, 91), cost_usd=(0.0, 0.0182), resamples=500)
    assert result.queries == n_q and result.queries_left_out == 1
    kept = qids[:n_q]
    for q, docs, queries in ((result.baseline, bad_docs, bad_q), (result.candidate, good_docs, good_q)):
        expected = _independent(ids, docs, queries, kept, qrels)
        assert q.means == pytest.approx(expected, abs=1e-9)
    d = result.differences["nDCG@10"]
    assert d.diff == pytest.approx(result.candidate.means["nDCG@10"] - result.baseline.means["nDCG@10"])
    assert d.low <= d.diff <= d.high and d.resamples == 500
    assert result.verdict() == "better" and d.low > 0  # noise 0.3 against 2.0: clearly better
    assert result.candidate.cost_per_1k_docs == pytest.approx(0.2) and result.baseline.cost_per_1k_docs == 0.0
    reverse = compare_versions(("good", good_docs, np.vstack([good_q, pad])),
                               ("bad", bad_docs, np.vstack([bad_q, pad])), shared, qids, qrels,
                               held=(91, 90), cost_usd=(0.0, 0.0), resamples=500)
    assert reverse.verdict() == "worse"


def test_compare_at_another_cut_off_matches_ir_measures_and_names_its_measures() -> None:
    rng = np.random.default_rng(3)
    ids = [f"d{i:03d}" for i in range(60)]
    a_docs, a_q = _space(rng, 60, 20, 0.8)
    b_docs, b_q = _space(rng, 60, 20, 1.2)
    qrels = {f"q{i}": {ids[3 * i]: 1, ids[3 * i + 2]: 1} for i in range(20)}
    result = compare_versions(("a", a_docs, a_q), ("b", b_docs, b_q), shared_corpus(ids, ids), list(qrels),
                              qrels, held=(60, 60), cost_usd=(0, 0), k=3, resamples=200)
    assert list(result.differences) == ["nDCG@3", "R@3", "RR@3"] and result.primary == "nDCG@3"
    assert result.baseline.means == pytest.approx(_independent(ids, a_docs, a_q, list(qrels), qrels, 3))
    assert result.candidate.means == pytest.approx(_independent(ids, b_docs, b_q, list(qrels), qrels, 3))
    assert Evidence.of(result, "set").measure == "nDCG@3"


def test_compare_of_identical_versions_is_no_difference() -> None:
    rng = np.random.default_rng(1)
    docs, queries = _space(rng, 30, 8, 0.5)
    ids = [f"d{i}" for i in range(30)]
    qrels = {f"q{i}": {ids[3 * i]: 1} for i in range(8)}
    result = compare_versions(("a", docs, queries), ("b", docs, queries), shared_corpus(ids, ids),
                              list(qrels), qrels, held=(30, 30), cost_usd=(0.0, 0.0))
    d = result.differences["nDCG@10"]
    assert (d.diff, d.low, d.high) == (0.0, 0.0, 0.0) and result.verdict() == "not measurably different"


def test_compare_without_shared_documents_or_judged_queries_says_so() -> None:
    docs = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="share no document"):
        compare_versions(("a", docs, docs), ("b", docs, docs), shared_corpus(["x"], ["y"]), ["q"], {},
                         held=(1, 1), cost_usd=(0, 0))
    with pytest.raises(ValueError, match="no labelled query"):
        compare_versions(("a", docs, docs[:1]), ("b", docs, docs[:1]), shared_corpus(["x", "y", "z"],
                         ["x", "y", "z"]), ["q"], {"q": {"other": 1}}, held=(3, 3), cost_usd=(0, 0))


def _evidence(baseline: str, candidate: str, diff: float, low: float, high: float) -> Evidence:
    return Evidence(baseline, candidate, "nDCG@10", 0.5, 0.5 + diff, diff, low, high, 0.95, 40, 300,
                    "q.jsonl + r.tsv", "2026-12-05 10:00:00Z", "ana")


def test_promotion_without_a_comparison_with_the_live_version_warns() -> None:
    check = promotion_check("new", ["old"], [_evidence("other", "new", 0.1, 0.05, 0.15)])
    assert not check.measured_better and check.against == ("old",)
    assert "has not been compared with the live version old" in check.warnings[0]
    assert "tierembed models compare old new" in check.warnings[0]


@pytest.mark.parametrize(("diff", "low", "high", "verdict"), [
    (-0.1, -0.15, -0.05, "worse"), (0.02, -0.01, 0.05, "not measurably different"),
    (0.0, 0.0, 0.0, "not measurably different")])
def test_promotion_not_measured_better_warns_with_the_figures(diff: float, low: float, high: float,
                                                              verdict: str) -> None:
    check = promotion_check("new", ["old"], [_evidence("old", "new", diff, low, high)])
    (warning,) = check.warnings
    assert "not measured better than the live version old" in warning and verdict in warning
    assert f"[{low:+.4f}, {high:+.4f}]" in warning


def test_promotion_measured_better_is_silent_and_the_newest_comparison_counts() -> None:
    newest_first = [_evidence("old", "new", 0.1, 0.04, 0.16), _evidence("old", "new", -0.1, -0.2, -0.01)]
    check = promotion_check("new", ["old", "new"], newest_first)
    assert check.measured_better and check.warnings == () and check.against == ("old",)
    stale_good = list(reversed(newest_first))
    assert not promotion_check("new", ["old"], stale_good).measured_better


def test_promotion_reads_a_comparison_made_the_other_way_round() -> None:
    # `compare new old` measured old - new = -0.1 [-0.16, -0.04]: new is better than old
    check = promotion_check("new", ["old"], [_evidence("new", "old", -0.1, -0.16, -0.04)])
    assert check.measured_better
    (e,) = check.evidence
    assert (e.baseline, e.candidate, e.diff, e.low, e.high) == ("old", "new", 0.1, 0.04, 0.16)
    worse = promotion_check("new", ["old"], [_evidence("new", "old", 0.1, 0.04, 0.16)])
    assert "worse" in worse.warnings[0]


def test_promotion_needs_evidence_against_every_live_version_of_the_tier() -> None:
    check = promotion_check("new", ["a", "b"], [_evidence("a", "new", 0.1, 0.05, 0.2)])
    assert len(check.warnings) == 1 and "live version b" in check.warnings[0]
    assert promotion_check("new", [], []).measured_better  # nothing live to beat
