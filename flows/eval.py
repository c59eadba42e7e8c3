"""``tierembed eval``: retrieval quality of the store, and of what-if policies on it.

Reads every model version's vectors from the store, embeds the labelled queries with each
version (paid ones recorded in the spend ledger, all cached), and ranks the queries the
way search does (same fusion, same calibration reference samples). Rows of the report:

* each version alone, over the documents it holds;
* the fused index as stored, under each fusion method;
* what-if policies on the same documents: all-local, all-premium, and tiered coverage /
  exclusive at budget shares of the all-premium estimate (the pipeline's own planner
  picks the premium documents), under each fusion method. These need every document's
  vector in both versions: ``--embed-missing`` embeds what the store lacks (its estimated
  cost is shown first and capped by ``--max-cost``) into a cache, once.

Each row has nDCG@10, recall@10 and MRR@10 (``ir-measures``), its cost, and the paired
bootstrap confidence interval of its nDCG@10 difference from all-local. The arithmetic is
:mod:`tiering.evaluation` and :mod:`tiering.policies`; :func:`evaluate_store` is the
reusable entry point (``tierembed models compare`` builds on it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flows.search import Searcher, open_searcher, save_platt
from store.vector_cache import VectorCache, doc_key, query_key
from store.vector_reader import StoredVersion
from tiering.chunking import estimate_tokens
from tiering.classifier import ValueClassifier, load_default
from tiering.documents import Document
from tiering.errors import ConfigError
from tiering.evaluation import (
    EvalCorpus,
    EvalSpace,
    Policy,
    PolicyResult,
    calibrated_scores,
    evaluate_policy,
    paired_bootstrap,
    reference_indices,
)
from tiering.fusion import FusionMethod, PlattCurve, fit_platt
from tiering.normalization import rank_normalize, uses_rank_normalization
from tiering.policies import PolicyInputs, what_if_policies
from tiering.pricing import price_for
from tiering.settings import TierembedSettings

__all__ = ["EvalOptions", "EvalRow", "EvalReport", "read_queries", "read_qrels", "evaluate_store"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    queries: Path
    qrels: Path
    shares: tuple[float, ...] = (0.1, 0.3, 0.5)
    embed_missing: bool = False
    max_cost_usd: float = 1.0
    methods: tuple[FusionMethod, ...] = (FusionMethod.ZSCORE, FusionMethod.RRF)
    local_version: str | None = None
    api_version: str | None = None
    cache_dir: Path = Path(".tierembed/eval-cache")
    fit_platt: Path | None = None
    resamples: int = 2000


@dataclass
class EvalRow:
    name: str
    kind: str  # "version" | "stored" | "what-if"
    premium_docs: int
    cost_usd: float
    cost_share: float | None
    means: dict[str, float]
    vs_local: dict[str, float] | None = None
    share_of_premium: float | None = None
    note: str = ""


@dataclass
class EvalReport:
    documents: int
    queries: int
    judged_missing: int
    local: str
    premium: str
    all_premium_cost_usd: float
    spent_usd: float
    rows: list[EvalRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "rows"} | {
            "rows": [r.__dict__ for r in self.rows]}


# ------------------------------------------------------------------------ inputs


def read_queries(path: Path) -> list[tuple[str, str]]:
    """``{"id", "text"}`` per line (JSONL)."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            out.append((str(item["id"]), str(item["text"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{n}: expected a JSON object with 'id' and 'text' ({exc})") from None
    return out


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """TREC qrels (``query 0 doc grade``, tab or space separated), read by ir-measures."""
    import ir_measures

    out: dict[str, dict[str, int]] = {}
    try:
        for q in ir_measures.read_trec_qrels(str(path)):
            out.setdefault(q.query_id, {})[q.doc_id] = int(q.relevance)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read qrels {path}: {exc}; expected TREC lines "
                          "'query 0 doc grade'") from None
    return out


# ------------------------------------------------------------------------ vectors


@dataclass
class _Corpus:
    ids: tuple[str, ...]
    texts: dict[str, str]
    hashes: dict[str, str]
    stored: dict[str, StoredVersion]


def _corpus(stored: dict[str, StoredVersion]) -> _Corpus:
    texts: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for sv in stored.values():
        for i, t, h in zip(sv.ids, sv.texts, sv.hashes, strict=True):
            texts.setdefault(i, t)
            hashes.setdefault(i, h)
    return _Corpus(tuple(sorted(texts)), texts, hashes, stored)


def _missing(corpus: _Corpus, version: str, cache: VectorCache) -> list[str]:
    held = set(corpus.stored[version].ids)
    return [i for i in corpus.ids if i not in held and cache.get(version, doc_key(corpus.hashes[i])) is None]


def _doc_matrix(corpus: _Corpus, version: str, cache: VectorCache) -> tuple[np.ndarray, np.ndarray]:
    """(vectors in corpus order, available mask); rows the store lacks come from the cache."""
    sv = corpus.stored[version]
    dim = sv.vectors.shape[1] if sv.vectors.size else 0
    index = {i: n for n, i in enumerate(sv.ids)}
    rows, have = [], []
    for doc_id in corpus.ids:
        if doc_id in index:
            rows.append(sv.vectors[index[doc_id]])
            have.append(True)
            continue
        cached = cache.get(version, doc_key(corpus.hashes[doc_id]))
        dim = dim or (cached.shape[0] if cached is not None else 0)
        rows.append(cached if cached is not None else None)
        have.append(cached is not None)
    dim = dim or next((r.shape[0] for r in rows if r is not None), 1)
    matrix = np.vstack([r if r is not None else np.zeros(dim, np.float32) for r in rows]).astype(np.float32)
    return matrix, np.asarray(have, dtype=bool)


def _embed_missing(searcher: Searcher, corpus: _Corpus, versions: Sequence[str], cache: VectorCache,
                   queries: Sequence[tuple[str, str]], opts: EvalOptions,
                   echo: Callable[[str], None]) -> None:
    plan = {v: _missing(corpus, v, cache) if opts.embed_missing else [] for v in versions}
    qplan = {v: [t for _, t in queries if cache.get(v, query_key(t)) is None] for v in versions}
    estimate = sum(searcher.embedders[v].estimate_usd([corpus.texts[i] for i in plan[v]] + qplan[v])
                   for v in versions)
    if estimate > 0:
        echo(f"eval: embedding {sum(map(len, plan.values()))} documents and "
             f"{sum(map(len, qplan.values()))} queries is estimated at ${estimate:.6f} "
             f"(--max-cost ${opts.max_cost_usd:.6f})")
    if estimate > opts.max_cost_usd:
        raise ConfigError(f"eval would spend an estimated ${estimate:.6f} on embeddings, over --max-cost "
                          f"${opts.max_cost_usd:.6f}; nothing was sent. Raise --max-cost or drop "
                          "--embed-missing")
    for v in versions:
        embedder = searcher.embedders[v]
        if plan[v]:
            vectors = embedder.embed_documents([corpus.texts[i] for i in plan[v]])
            cache.put(v, [doc_key(corpus.hashes[i]) for i in plan[v]], vectors)
        if qplan[v]:
            cache.put(v, [query_key(t) for t in qplan[v]], embedder.embed_queries(qplan[v]))


# ------------------------------------------------------------------------ policies


def _router_inputs(settings: TierembedSettings, corpus: _Corpus, local: str, premium: str) -> PolicyInputs:
    path = settings.routing.classifier_path
    clf = ValueClassifier.load(path) if path else load_default()
    docs = [Document(i, corpus.texts[i], "eval", "{}", corpus.hashes[i]) for i in corpus.ids]
    scores = clf.score_many(docs)
    if uses_rank_normalization(settings.routing.score_normalization, path):
        scores = rank_normalize(scores)
    model = next(m for m in settings.api.models if m.version == premium)
    per_token = float(price_for(model.model, model.price_per_million_tokens).per_token)
    costs = tuple(estimate_tokens(d.text) * per_token for d in docs)
    threshold = None if path is None else settings.routing.api_threshold
    return PolicyInputs(corpus.ids, tuple(scores), costs, local, premium, threshold)


def _platt_curves(spaces: Sequence[EvalSpace], corpus: EvalCorpus) -> dict[str, PlattCurve]:
    """Per-version curves from judged pairs: each query's relevant documents against its
    100 best-scoring unjudged ones in that version."""
    curves = {}
    for space in spaces:
        z = calibrated_scores(space, corpus.reference)
        xs, ys = [], []
        for qi, qid in enumerate(corpus.query_ids):
            judged = corpus.qrels.get(qid, {})
            top = np.argsort(-z[qi])[:100]
            for j in set(top.tolist()) | {corpus.doc_ids.index(d) for d in judged if d in corpus.doc_ids}:
                xs.append(float(z[qi, j]))
                ys.append(judged.get(corpus.doc_ids[j], 0) > 0)
        curves[space.version] = fit_platt(xs, ys)
    return curves


def _row(result: PolicyResult, kind: str, premium: str, total: float, base: PolicyResult | None,
         top: PolicyResult | None, resamples: int) -> EvalRow:
    p = result.policy
    premium_docs = int(np.asarray(p.holds.get(premium, [])).sum())
    row = EvalRow(p.name, kind, premium_docs, p.cost_usd, p.cost_usd / total if total else None,
                  {m: round(result.mean(m), 4) for m in result.per_query}, note=p.note)
    if base is not None and base is not result:
        c = paired_bootstrap(result, base, resamples=resamples)
        row.vs_local = {"diff": round(c.diff, 4), "low": round(c.low, 4), "high": round(c.high, 4)}
    if top is not None and top.mean("nDCG@10") > 0:
        row.share_of_premium = round(result.mean("nDCG@10") / top.mean("nDCG@10"), 4)
    return row


def evaluate_store(settings: TierembedSettings, opts: EvalOptions,
                   echo: Callable[[str], None] = print) -> EvalReport:
    """Evaluate the configured store on a labelled query set (see the module docstring)."""
    queries = read_queries(opts.queries)
    qrels = read_qrels(opts.qrels)
    with open_searcher(settings, kind="eval") as searcher:
        s = searcher.settings
        local = opts.local_version or s.local.models[0].version
        premium = opts.api_version or s.api.models[0].version
        stored = {v: searcher.store.read_version(v) for v in (local, premium)}
        corpus = _corpus(stored)
        if not corpus.ids:
            raise ConfigError("the store is empty; run `tierembed run SOURCE` on the labelled "
                              "documents first")
        cache = VectorCache(opts.cache_dir)
        searcher.vector_cache = cache
        _embed_missing(searcher, corpus, (local, premium), cache, queries, opts, echo)
        report = _evaluate(s, searcher, corpus, cache, queries, qrels, local, premium, opts)
        report.spent_usd = round(searcher.embedders.spend.cost_usd, 6)
    return report


def _evaluate(settings: TierembedSettings, searcher: Searcher, corpus: _Corpus, cache: VectorCache,
              queries: Sequence[tuple[str, str]], qrels: dict[str, dict[str, int]], local: str,
              premium: str, opts: EvalOptions) -> EvalReport:
    qids = tuple(q for q, _ in queries)
    spaces, complete = [], {}
    for v in (local, premium):
        docs, have = _doc_matrix(corpus, v, cache)
        qv = np.vstack([cache.get(v, query_key(t)) for _, t in queries]).astype(np.float32)
        ref = searcher.reference(v) if v in searcher.versions else None
        spaces.append(EvalSpace(v, docs, qv, ref))
        complete[v] = bool(have.all())
    ev = EvalCorpus(corpus.ids, qids, qrels, reference_indices(corpus.ids, settings.search.reference_size))
    judged = {d for q in qids for d in qrels.get(q, {})}
    inputs = _router_inputs(settings, corpus, local, premium)
    total = float(sum(inputs.premium_cost_usd))
    report = EvalReport(len(corpus.ids), len(qids), len(judged - set(corpus.ids)), local, premium,
                        round(total, 6), 0.0)
    ids = np.asarray(corpus.ids)
    stored_masks = {v: np.isin(ids, np.asarray(corpus.stored[v].ids)) for v in (local, premium)}
    platt = _platt_curves(spaces, ev) if FusionMethod.PLATT in opts.methods or opts.fit_platt else None
    if opts.fit_platt and platt:
        save_platt(opts.fit_platt, platt, f"fitted by tierembed eval on {opts.queries} ({len(qids)} queries)")
    policies: list[tuple[str, Policy]] = []
    for v in (local, premium):
        holds = {local: stored_masks[v] if v == local else np.zeros(len(corpus.ids), bool),
                 premium: stored_masks[v] if v == premium else np.zeros(len(corpus.ids), bool)}
        cost = corpus.stored[v].cost_usd
        policies.append(("version", Policy(f"{v} alone (as stored)", holds, FusionMethod.ZSCORE, cost,
                                           note=f"{int(stored_masks[v].sum())} docs")))
    stored_cost = sum(corpus.stored[v].cost_usd for v in (local, premium))
    for m in opts.methods:
        policies.append(("stored", Policy(f"as stored, {m.value}", dict(stored_masks), m, stored_cost,
                                          platt=platt)))
    if complete[local] and complete[premium]:
        for p in what_if_policies(inputs, opts.shares, opts.methods):
            policies.append(("what-if", Policy(p.name, p.holds, p.method, p.cost_usd, platt=platt,
                                               note=p.note)))
    else:
        report.notes.append("what-if policies need every document in both versions: rerun with "
                            "--embed-missing (cost shown first, capped by --max-cost)")
    results = [(kind, evaluate_policy(spaces, ev, p)) for kind, p in policies]
    by_name = {r.policy.name: r for _, r in results}
    base = by_name.get("all-local") or by_name.get(f"{local} alone (as stored)")
    top = by_name.get("all-premium")
    report.rows = [_row(r, kind, premium, total, base, top, opts.resamples) for kind, r in results]
    if report.judged_missing:
        report.notes.append(f"{report.judged_missing} judged documents are not in the store (they count "
                            "as not found)")
    return report
