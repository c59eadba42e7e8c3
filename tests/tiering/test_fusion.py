"""Calibrated fusion: relevant documents win in either space, small tables cannot crowd
out the rest, and documents with two vectors are not counted twice. Each test also shows
that reciprocal-rank fusion fails the same check (so the test can fail on that bug)."""

from __future__ import annotations

import numpy as np
import pytest

from tiering.fusion import (
    FusionMethod,
    PlattCurve,
    VersionResult,
    fit_platt,
    fuse,
    zscore_calibration,
)

DIM = 256


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _near(query: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine ``cos`` from ``query``."""
    noise = _unit(rng.normal(size=DIM))
    noise = _unit(noise - (noise @ query) * query)
    return cos * query + np.sqrt(1 - cos**2) * noise


class Space:
    """One model version's space: random unit vectors for every document of the corpus."""

    def __init__(self, n_docs: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.docs = _unit(self.rng.normal(size=(n_docs, DIM)))
        self.query = _unit(self.rng.normal(size=DIM))

    def make_relevant(self, i: int, cos: float = 0.6) -> None:
        self.docs[i] = _near(self.query, cos, self.rng)

    def result(self, version: str, held: list[int] | range, reference: np.ndarray) -> VersionResult:
        scores = {f"d{i}": float(self.docs[i] @ self.query) for i in held}
        order = sorted(scores, key=lambda d: -scores[d])
        return VersionResult(version, scores, zscore_calibration(self.query, reference),
                             {d: r for r, d in enumerate(order[:100], start=1)})


def _reference(space: Space, n: int = 256) -> np.ndarray:
    return space.docs[np.linspace(0, len(space.docs) - 1, n).astype(int)]


def _rank_of(hits: list, doc_id: str) -> int:
    return next(r for r, h in enumerate(hits, start=1) if h.id == doc_id)


@pytest.mark.parametrize("premium_size", [2, 10, 300, 2000])
@pytest.mark.parametrize("relevant_in", ["local", "premium"])
def test_zscore_ranks_a_document_relevant_in_either_space_above_irrelevant_ones(
    premium_size: int, relevant_in: str
) -> None:
    n = 2000
    local, premium = Space(n, 1), Space(n, 2)
    target = 1  # held by both versions whatever the premium table's size
    (local if relevant_in == "local" else premium).make_relevant(target)
    premium_held = range(premium_size)
    for method in ("coverage", "exclusive"):
        local_held = range(n) if method == "coverage" else range(premium_size, n)
        if method == "exclusive" and relevant_in == "local":
            local_held = range(n)  # the relevant document must be in the space that knows it
            premium_held = range(2, premium_size) if premium_size > 2 else range(0)
        results = [local.result("local", local_held, _reference(local)),
                   premium.result("premium", premium_held, _reference(premium))]
        hits = fuse(results, FusionMethod.ZSCORE)
        assert hits[0].id == f"d{target}", (method, [h.id for h in hits[:5]])


def test_a_premium_table_of_two_documents_stays_out_of_the_top_10_it_does_not_answer() -> None:
    n = 3000
    top10_zscore, top10_rrf = [], []
    for seed in range(20):  # 20 queries
        local, premium = Space(n, 100 + seed), Space(n, 200 + seed)
        for i in range(10, 20):  # ten documents answer the query, in the local space
            local.make_relevant(i, 0.5)
        results = [local.result("local", range(2, n), _reference(local)),
                   premium.result("premium", [0, 1], _reference(premium))]  # exclusive, 2 docs
        zs = [h.id for h in fuse(results, FusionMethod.ZSCORE)[:10]]
        rrf = [h.id for h in fuse(results, FusionMethod.RRF)[:10]]
        top10_zscore.append(zs)
        top10_rrf.append(rrf)
        assert set(zs) == {f"d{i}" for i in range(10, 20)}
    # RRF puts the two premium documents at the top of every query (the bug fixed here)
    assert all({"d0", "d1"} <= set(t[:4]) for t in top10_rrf)


def test_coverage_does_not_count_a_document_with_two_vectors_twice() -> None:
    n = 1000
    space = Space(n, 7)
    for i in range(0, 50):
        space.make_relevant(i, 0.3 + 0.005 * i)
    reference = _reference(space)
    alone = fuse([space.result("local", range(n), reference)], FusionMethod.ZSCORE)
    # coverage: the same model as "premium" on a third of the corpus, the local one on all
    both = [space.result("local", range(n), reference),
            space.result("premium", range(0, n, 3), reference)]
    fused = fuse(both, FusionMethod.ZSCORE)
    assert [h.id for h in fused[:50]] == [h.id for h in alone[:50]]
    assert fused[0].fused == pytest.approx(alone[0].fused)
    # RRF counts them twice: documents held by both versions crowd the top
    rrf = fuse(both, FusionMethod.RRF)[:10]
    assert sum(1 for h in rrf if int(h.id[1:]) % 3 == 0) >= 8


def test_weights_and_platt_curves_change_how_versions_combine() -> None:
    space = Space(500, 3)
    space.make_relevant(5)
    ref = _reference(space)
    results = [space.result("a", range(500), ref), space.result("b", range(0, 500, 5), ref)]
    plain = fuse(results, FusionMethod.ZSCORE)
    curves = {"a": PlattCurve(1.0, -4.0), "b": PlattCurve(1.0, -4.0)}
    platt = fuse(results, FusionMethod.PLATT, platt=curves)
    assert 0.0 < platt[0].fused < 1.0 and platt[0].id == plain[0].id
    with pytest.raises(ValueError):
        fuse(results, FusionMethod.PLATT)


def test_fit_platt_learns_an_increasing_curve() -> None:
    rng = np.random.default_rng(0)
    z = np.r_[rng.normal(0, 1, 500), rng.normal(4, 1, 50)]
    rel = np.r_[np.zeros(500, bool), np.ones(50, bool)]
    curve = fit_platt(z, rel)
    assert curve.a > 0 and curve(5.0) > 0.5 > curve(0.0)


def test_calibration_needs_a_reference_sample() -> None:
    with pytest.raises(ValueError):
        zscore_calibration(np.ones(4), np.ones((1, 4)))
