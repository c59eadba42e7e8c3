"""Two model versions compared on the documents both embedded, and what a promotion needs.

``tierembed models compare V1 V2`` hands :func:`compare_versions` each version's vectors of
the *shared* corpus (the documents both versions hold in the store: a shadow sample, or a
backfill) and of the labelled queries. Each version ranks the queries alone, in its own
space (no fusion: a single version's calibrated score is a monotone map of its cosine, so
the ranking is plain nearest neighbours), scored by :mod:`tiering.evaluation` (ir-measures
nDCG@10, R@10, MRR@10), and the per-query difference V2 - V1 gets a paired bootstrap
confidence interval. Queries with no relevant document in the shared corpus are left out
(both versions would score 0 on them: they carry no evidence and dilute the difference).

The result is recorded as :class:`Evidence`; :func:`promotion_check` reads it when a
version is promoted: the candidate is *measured better* than a live version when the
lower bound of the interval of ``candidate - live`` on the primary measure is above 0.

Pure: numpy in, dataclasses out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tiering.evaluation import (
    Comparison,
    EvalCorpus,
    EvalSpace,
    FloatMatrix,
    Policy,
    PolicyResult,
    Qrels,
    evaluate_policy,
    measure_names,
    paired_bootstrap,
    reference_indices,
)
from tiering.fusion import FusionMethod

__all__ = [
    "PRIMARY_MEASURE",
    "SharedCorpus",
    "VersionQuality",
    "VersionComparison",
    "Evidence",
    "PromotionCheck",
    "shared_corpus",
    "judged_queries",
    "cost_per_1k",
    "compare_versions",
    "promotion_check",
]

PRIMARY_MEASURE = "nDCG@10"  # at the default cut-off; nDCG@k with --k

@dataclass(frozen=True)
class SharedCorpus:
    """The documents both versions hold (sorted ids), and how many of each were left out."""

    ids: tuple[str, ...]
    left_out: tuple[int, int]
    """(V1's documents not held by V2, V2's documents not held by V1)"""


@dataclass(frozen=True)
class VersionQuality:
    version: str
    means: Mapping[str, float]
    documents: int
    """Documents the version holds in the store (all of them, not only the shared ones)."""
    cost_usd: float
    """Billed API spend of those documents (the store's ``cost_usd``); 0 for a local model."""

    @property
    def cost_per_1k_docs(self) -> float:
        return cost_per_1k(self.cost_usd, self.documents)


@dataclass(frozen=True)
class VersionComparison:
    """``baseline`` (V1) against ``candidate`` (V2): differences are candidate - baseline."""

    baseline: VersionQuality
    candidate: VersionQuality
    differences: Mapping[str, Comparison]
    shared: SharedCorpus
    query_ids: tuple[str, ...]
    """The queries evaluated: those with a relevant document in the shared corpus."""
    queries_left_out: int
    """Labelled queries with no relevant document in the shared corpus."""
    results: tuple[PolicyResult, PolicyResult]

    @property
    def queries(self) -> int:
        return len(self.query_ids)

    @property
    def primary(self) -> str:
        """The measure promotion reads: nDCG at the comparison's cut-off."""
        return next(iter(self.differences))

    def verdict(self, measure: str | None = None) -> str:
        d = self.differences[measure or self.primary]
        return _verdict(d.low, d.high)


@dataclass(frozen=True)
class Evidence:
    """One recorded comparison, as promotion reads it."""

    baseline: str
    candidate: str
    measure: str
    baseline_mean: float
    candidate_mean: float
    diff: float
    low: float
    high: float
    confidence: float
    queries: int
    documents: int
    query_set: str
    at: str = ""
    by: str = ""

    @classmethod
    def of(cls, comparison: VersionComparison, query_set: str, measure: str | None = None) -> Evidence:
        measure = measure or comparison.primary
        d = comparison.differences[measure]
        return cls(comparison.baseline.version, comparison.candidate.version, measure,
                   comparison.baseline.means[measure], comparison.candidate.means[measure], d.diff,
                   d.low, d.high, d.confidence, comparison.queries, len(comparison.shared.ids), query_set)

    def seen_from(self, candidate: str) -> Evidence:
        """The same evidence with ``candidate`` as the candidate (a comparison run as
        ``compare CANDIDATE LIVE`` flips sign and interval)."""
        if candidate == self.candidate:
            return self
        if candidate != self.baseline:
            raise ValueError(f"evidence {self.baseline} vs {self.candidate} says nothing about {candidate}")
        return Evidence(self.candidate, self.baseline, self.measure, self.candidate_mean, self.baseline_mean,
                        -self.diff, -self.high, -self.low, self.confidence, self.queries, self.documents,
                        self.query_set, self.at, self.by)

    @property
    def better(self) -> bool:
        return self.low > 0


@dataclass(frozen=True)
class PromotionCheck:
    """Whether promoting ``candidate`` is backed by evidence; ``warnings`` say why not."""

    candidate: str
    against: tuple[str, ...]
    evidence: tuple[Evidence, ...]
    warnings: tuple[str, ...]

    @property
    def measured_better(self) -> bool:
        return not self.warnings


def _verdict(low: float, high: float) -> str:
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "not measurably different"


def shared_corpus(ids_v1: Sequence[str], ids_v2: Sequence[str]) -> SharedCorpus:
    a, b = set(ids_v1), set(ids_v2)
    both = a & b
    return SharedCorpus(tuple(sorted(both)), (len(a - both), len(b - both)))


def judged_queries(query_ids: Sequence[str], qrels: Qrels, doc_ids: Sequence[str]) -> tuple[str, ...]:
    """The queries with at least one relevant (grade > 0) document among ``doc_ids``."""
    held = set(doc_ids)
    return tuple(q for q in query_ids if any(g > 0 and d in held for d, g in qrels.get(q, {}).items()))


def cost_per_1k(cost_usd: float, documents: int) -> float:
    return 1000.0 * cost_usd / documents if documents else 0.0


def _alone(space: EvalSpace, corpus: EvalCorpus, k: int) -> PolicyResult:
    holds = {space.version: np.ones(len(corpus.doc_ids), dtype=bool)}
    return evaluate_policy([space], corpus, Policy(f"{space.version} alone", holds, FusionMethod.ZSCORE), k=k)


def compare_versions(
    v1: tuple[str, FloatMatrix, FloatMatrix], v2: tuple[str, FloatMatrix, FloatMatrix],
    shared: SharedCorpus, query_ids: Sequence[str], qrels: Qrels, *,
    held: tuple[int, int], cost_usd: tuple[float, float], k: int = 10, resamples: int = 2000,
    seed: int = 0,
) -> VersionComparison:
    """Rank ``query_ids`` with each version alone over ``shared`` and compare.

    ``v1``/``v2`` are (version, document vectors in ``shared.ids`` order, query vectors in
    ``query_ids`` order), L2-normalized; ``held`` and ``cost_usd`` are each version's
    documents in the store and their billed cost (for cost per 1k documents); measures are
    nDCG@k (the primary one), R@k and RR@k."""
    if not shared.ids:
        raise ValueError("the two versions share no document")
    keep = judged_queries(query_ids, qrels, shared.ids)
    if not keep:
        raise ValueError("no labelled query has a relevant document in the shared corpus")
    rows = [query_ids.index(q) for q in keep]
    corpus = EvalCorpus(shared.ids, keep, qrels, reference_indices(shared.ids, 2))
    spaces = [EvalSpace(name, docs, np.asarray(queries)[rows]) for name, docs, queries in (v1, v2)]
    first, second = (_alone(s, corpus, k) for s in spaces)
    measures = measure_names(k)
    diffs = {m: paired_bootstrap(second, first, m, resamples=resamples, seed=seed) for m in measures}
    quality = [VersionQuality(s.version, {m: r.mean(m) for m in measures}, n, c)
               for s, r, n, c in zip(spaces, (first, second), held, cost_usd, strict=True)]
    return VersionComparison(quality[0], quality[1], diffs, shared, keep,
                             len(query_ids) - len(keep), (first, second))


def promotion_check(candidate: str, live: Sequence[str], evidence: Sequence[Evidence]) -> PromotionCheck:
    """Is promoting ``candidate`` backed by a comparison against each ``live`` version of
    its tier? ``evidence`` is every recorded comparison, newest first; the newest one
    between the candidate and a live version (in either order) counts."""
    against = tuple(v for v in live if v != candidate)
    used, warnings = [], []
    for base in against:
        found = next((e for e in evidence if {e.baseline, e.candidate} == {base, candidate}), None)
        if found is None:
            warnings.append(f"{candidate} has not been compared with the live version {base}: measure it "
                            f"first with `tierembed models compare {base} {candidate} --queries Q --qrels R`")
            continue
        e = found.seen_from(candidate)
        used.append(e)
        if not e.better:
            warnings.append(
                f"{candidate} is not measured better than the live version {base}: {e.measure} "
                f"{e.candidate_mean:.4f} vs {e.baseline_mean:.4f}, difference {e.diff:+.4f} "
                f"({e.confidence:.0%} CI [{e.low:+.4f}, {e.high:+.4f}], {_verdict(e.low, e.high)}; "
                f"{e.queries} queries on {e.documents} shared documents, {e.query_set}, {e.at})")
    return PromotionCheck(candidate, against, tuple(used), tuple(warnings))
