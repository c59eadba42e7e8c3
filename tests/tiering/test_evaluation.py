"""The evaluation core: metrics from ir-measures, queries without results score 0, paired
bootstrap intervals, and policy matrices that match tiering.fusion."""

from __future__ import annotations

import numpy as np
import pytest

from tiering.evaluation import (
    EvalCorpus,
    EvalSpace,
    Policy,
    evaluate_policy,
    fused_matrix,
    paired_bootstrap,
    per_query_metrics,
    reference_indices,
)
from tiering.fusion import FusionMethod, VersionResult, fuse, zscore_calibration


def test_metrics_come_from_ir_measures_and_a_query_without_results_scores_zero() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d9": 1}}
    run = {"q1": [("d2", 2.0), ("d1", 1.0)]}
    m = per_query_metrics(run, qrels, ["q1", "q2"])
    assert m["RR@10"].tolist() == [0.5, 0.0]
    assert m["nDCG@10"][0] == pytest.approx(1 / np.log2(3)) and m["R@10"].tolist() == [1.0, 0.0]


def test_reference_sample_is_stable_whatever_the_order() -> None:
    ids = [f"d{i}" for i in range(100)]
    a = {ids[i] for i in reference_indices(ids, 10)}
    shuffled = ids[::-1]
    b = {shuffled[i] for i in reference_indices(shuffled, 10)}
    assert a == b and len(a) == 10


def _spaces(seed: int = 0) -> tuple[list[EvalSpace], EvalCorpus]:
    rng = np.random.default_rng(seed)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    docs_a, docs_b = unit(rng.normal(size=(60, 16))), unit(rng.normal(size=(60, 16)))
    qa, qb = unit(rng.normal(size=(5, 16))), unit(rng.normal(size=(5, 16)))
    ids = tuple(f"d{i:02d}" for i in range(60))
    corpus = EvalCorpus(ids, tuple(f"q{i}" for i in range(5)), {f"q{i}": {ids[i]: 1} for i in range(5)},
                        reference_indices(ids, 30))
    return [EvalSpace("a", docs_a, qa), EvalSpace("b", docs_b, qb)], corpus


def test_the_policy_matrix_ranks_as_search_fuses() -> None:
    spaces, corpus = _spaces()
    holds = {"a": np.ones(60, bool), "b": np.arange(60) % 3 == 0}
    matrix = fused_matrix(spaces, corpus, Policy("p", holds))
    for qi in range(5):
        results = []
        for s in spaces:
            held = np.flatnonzero(holds[s.version])
            scores = {corpus.doc_ids[j]: float(s.docs[j] @ s.queries[qi]) for j in held}
            results.append(VersionResult(s.version, scores,
                                         zscore_calibration(s.queries[qi], s.docs[corpus.reference])))
        fused = fuse(results, FusionMethod.ZSCORE)
        expected = [h.id for h in fused[:10]]
        got = [corpus.doc_ids[j] for j in np.argsort(-matrix[qi], kind="stable")[:10]]
        assert got == expected


def test_paired_bootstrap_interval_contains_the_mean_difference() -> None:
    spaces, corpus = _spaces(1)
    every, none = np.ones(60, bool), np.zeros(60, bool)
    a = evaluate_policy(spaces, corpus, Policy("a", {"a": every, "b": none}))
    b = evaluate_policy(spaces, corpus, Policy("b", {"a": none, "b": every}))
    c = paired_bootstrap(a, b, resamples=500)
    assert c.low <= c.diff <= c.high
    same = paired_bootstrap(a, a)
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0)
