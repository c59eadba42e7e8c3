"""Retrieval quality of a tiered index, and of what-if policies on the same vectors.

``tierembed eval`` (and ``tierembed models compare``) hand this module, per model version,
the vectors of every document of a labelled set and of every query, plus which documents
each version *holds* under a policy (a boolean mask). It ranks every query the way search
does (:mod:`tiering.fusion`: calibrated against a reference sample of the corpus, or RRF),
scores the rankings with ``ir-measures`` (nDCG@10, recall@10, MRR@10 per query), and
compares policies with paired bootstrap confidence intervals over queries
(``scipy.stats.bootstrap``, ``paired=True``). Pure: numpy in, dataclasses out.

Ranking here is exact (every document is scored); search ranks the union of each
version's top candidates, which gives the same top 10 unless a relevant document is in no
version's candidate list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tiering.ab import stable_unit
from tiering.fusion import RRF_K, FusionMethod, PlattCurve

__all__ = [
    "MEASURES",
    "measure_names",
    "EvalSpace",
    "EvalCorpus",
    "Policy",
    "PolicyResult",
    "Comparison",
    "reference_indices",
    "calibrated_scores",
    "fused_matrix",
    "rank_policy",
    "per_query_metrics",
    "evaluate_policy",
    "paired_bootstrap",
    "Qrels",
]

MEASURES = ("nDCG@10", "R@10", "RR@10")


def measure_names(k: int = 10) -> tuple[str, str, str]:
    """The names ir-measures gives nDCG, recall and reciprocal rank at cut-off ``k``."""
    return (f"nDCG@{k}", f"R@{k}", f"RR@{k}")


Qrels = Mapping[str, Mapping[str, int]]  # query id -> document id -> grade
FloatMatrix = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
_TOP = 100  # documents per query handed to ir-measures (the measures look at 10)


@dataclass(frozen=True)
class EvalSpace:
    """One model version's vectors: a row per document (``EvalCorpus.doc_ids`` order) and
    per query (``EvalCorpus.query_ids`` order), L2-normalized."""

    version: str
    docs: FloatMatrix
    queries: FloatMatrix
    reference: FloatMatrix | None = None
    """The version's calibration reference vectors (as search uses them); None: the rows
    ``EvalCorpus.reference`` of ``docs``."""


@dataclass(frozen=True)
class EvalCorpus:
    doc_ids: tuple[str, ...]
    query_ids: tuple[str, ...]
    qrels: Qrels
    reference: npt.NDArray[np.int64]
    """Row indices of the calibration reference sample (see :func:`reference_indices`)."""


@dataclass(frozen=True)
class Policy:
    """Which documents each version holds, how results are fused, and what it cost."""

    name: str
    holds: Mapping[str, BoolArray]
    method: FusionMethod = FusionMethod.ZSCORE
    cost_usd: float = 0.0
    weights: Mapping[str, float] | None = None
    platt: Mapping[str, PlattCurve] | None = None
    note: str = ""


@dataclass(frozen=True)
class PolicyResult:
    policy: Policy
    per_query: Mapping[str, npt.NDArray[np.float64]]
    """measure -> values, one per query in ``EvalCorpus.query_ids`` order"""

    def mean(self, measure: str) -> float:
        return float(np.mean(self.per_query[measure]))


@dataclass(frozen=True)
class Comparison:
    """Mean of ``a - b`` over queries with a paired bootstrap confidence interval."""

    measure: str
    diff: float
    low: float
    high: float
    confidence: float = 0.95
    resamples: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def reference_indices(doc_ids: Sequence[str], size: int, salt: str = "calibration") -> npt.NDArray[np.int64]:
    """A stable sample of ``size`` documents (the same ids whatever the order or the other
    documents): the lowest stable hashes. Search draws its reference sample the same way."""
    order = sorted(range(len(doc_ids)), key=lambda i: stable_unit(doc_ids[i], salt))
    return np.asarray(sorted(order[: max(2, min(size, len(doc_ids)))]), dtype=np.int64)


def calibrated_scores(space: EvalSpace, reference: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Per-query z-scores of every document in one version's space (queries x documents),
    against the query's scores on the reference sample."""
    raw = (space.queries @ space.docs.T).astype(np.float64)
    if space.reference is not None:
        ref = (space.queries @ space.reference.T).astype(np.float64)
    else:
        ref = raw[:, reference]
    mean = ref.mean(axis=1, keepdims=True)
    std = np.maximum(ref.std(axis=1, keepdims=True), 1e-6)
    z: npt.NDArray[np.float64] = (raw - mean) / std
    return z


def _rrf_matrix(spaces: Sequence[EvalSpace], policy: Policy, depth: int) -> npt.NDArray[np.float64]:
    n_q, n_d = spaces[0].queries.shape[0], spaces[0].docs.shape[0]
    fused = np.zeros((n_q, n_d))
    for space in spaces:
        held = np.asarray(policy.holds[space.version], dtype=bool)
        if not held.any():
            continue
        raw = (space.queries @ space.docs.T).astype(np.float64)
        raw[:, ~held] = -np.inf
        order = np.argsort(-raw, axis=1, kind="stable")[:, :depth]
        rows = np.arange(n_q)[:, None]
        ranks = np.arange(1, order.shape[1] + 1)[None, :]
        valid = np.take_along_axis(raw, order, axis=1) > -np.inf
        fused[rows, order] += np.where(valid, 1.0 / (RRF_K + ranks), 0.0)
    return fused


def fused_matrix(
    spaces: Sequence[EvalSpace], corpus: EvalCorpus, policy: Policy, *, rrf_depth: int = 40
) -> npt.NDArray[np.float64]:
    """Fused scores (queries x documents) under ``policy``; -inf where no version holds a
    document. Calibrated fusion is the weighted mean of the calibrated scores of the
    versions holding each document (as :func:`tiering.fusion.fuse_calibrated`)."""
    if policy.method is FusionMethod.RRF:
        fused = _rrf_matrix(spaces, policy, rrf_depth)
        anyheld = np.any([np.asarray(policy.holds[s.version], bool) for s in spaces], axis=0)
        fused[:, ~anyheld] = -np.inf
        return fused
    n_q, n_d = spaces[0].queries.shape[0], spaces[0].docs.shape[0]
    total, weight = np.zeros((n_q, n_d)), np.zeros(n_d)
    for space in spaces:
        held = np.asarray(policy.holds[space.version], dtype=bool)
        if not held.any():
            continue
        values = calibrated_scores(space, corpus.reference)
        if policy.method is FusionMethod.PLATT:
            curve = (policy.platt or {}).get(space.version)
            if curve is None:
                raise ValueError(f"policy {policy.name!r}: no Platt curve for {space.version!r}")
            values = 1.0 / (1.0 + np.exp(-(curve.a * values + curve.b)))
        w = 1.0 if policy.weights is None else float(policy.weights.get(space.version, 1.0))
        total[:, held] += w * values[:, held]
        weight[held] += w
    with np.errstate(invalid="ignore", divide="ignore"):
        fused = np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), -np.inf)
    return fused


def rank_policy(
    spaces: Sequence[EvalSpace], corpus: EvalCorpus, policy: Policy, *, depth: int = _TOP
) -> dict[str, list[tuple[str, float]]]:
    """The top ``depth`` documents of every query under ``policy``: query id -> [(doc id, score)]."""
    fused = fused_matrix(spaces, corpus, policy)
    top = np.argsort(-fused, axis=1, kind="stable")[:, :depth]
    run: dict[str, list[tuple[str, float]]] = {}
    for qi, qid in enumerate(corpus.query_ids):
        run[qid] = [(corpus.doc_ids[j], float(fused[qi, j])) for j in top[qi] if np.isfinite(fused[qi, j])]
    return run


def per_query_metrics(
    run: Mapping[str, Sequence[tuple[str, float]]], qrels: Qrels, query_ids: Sequence[str], *, k: int = 10
) -> dict[str, npt.NDArray[np.float64]]:
    """nDCG@k, R@k and RR@k (k = 10 by default) per query, computed by ir-measures; a query
    with no result scores 0 (ir-measures leaves it out)."""
    import ir_measures
    from ir_measures import RR, R, nDCG

    measures = [nDCG @ k, R @ k, RR @ k]
    judged = [ir_measures.Qrel(q, d, int(g)) for q in query_ids for d, g in qrels.get(q, {}).items()]
    scored = [ir_measures.ScoredDoc(q, d, s) for q in query_ids for d, s in run.get(q, ())]
    values: dict[str, dict[str, float]] = {str(m): {} for m in measures}
    for metric in ir_measures.iter_calc(measures, judged, scored):
        values[str(metric.measure)][metric.query_id] = float(metric.value)
    return {name: np.asarray([by_q.get(q, 0.0) for q in query_ids]) for name, by_q in values.items()}


def evaluate_policy(spaces: Sequence[EvalSpace], corpus: EvalCorpus, policy: Policy, *,
                    k: int = 10) -> PolicyResult:
    """Rank every query under ``policy`` and score it at cut-off ``k``."""
    run = rank_policy(spaces, corpus, policy, depth=max(_TOP, k))
    return PolicyResult(policy, per_query_metrics(run, corpus.qrels, corpus.query_ids, k=k))


def paired_bootstrap(
    a: PolicyResult, b: PolicyResult, measure: str = "nDCG@10", *, resamples: int = 2000,
    confidence: float = 0.95, seed: int = 0,
) -> Comparison:
    """Mean per-query difference ``a - b`` in ``measure`` and its percentile bootstrap CI
    (queries resampled in pairs, ``scipy.stats.bootstrap``)."""
    from scipy.stats import bootstrap

    x, y = a.per_query[measure], b.per_query[measure]
    diff = float(np.mean(x - y))
    if len(x) < 2 or np.allclose(x, y):
        return Comparison(measure, diff, diff, diff, confidence, 0)
    res = bootstrap((x, y), lambda u, v, axis=-1: np.mean(u - v, axis=axis), paired=True,
                    n_resamples=resamples, confidence_level=confidence, method="percentile",
                    rng=np.random.default_rng(seed), vectorized=True)
    ci = res.confidence_interval
    return Comparison(measure, diff, float(ci.low), float(ci.high), confidence, resamples)
