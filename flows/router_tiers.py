"""The two real tiers behind ``tierembed router train --from-queries``, and what they cost.

:func:`derive_with_real_tiers` embeds a document sample and the queries with the local
model (chunked and aggregated exactly as the pipeline embeds) and with the API model
(through the endpoint :func:`flows.endpoint.resolve_endpoint` picks), then hands both to
:func:`tiering.gain_labels.derive_gain_labels`. The API calls cost money: the estimate is
checked against ``--max-cost`` and the month's budget before anything is sent, and the
billed spend is recorded in the spend ledger.

Retries: the openai client's own (``max_retries=3``) are the one retry layer of this
offline tool. Heavy imports (torch through the local embedder, openai) stay inside the
functions that need them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from store.ledger import SpendLedger, SpendLine
from tiering.chunking import aggregate_vectors, chunk_text, estimate_tokens
from tiering.classifier import ValueClassifier, in_holdout
from tiering.documents import Document
from tiering.errors import ConfigError
from tiering.evaluation import (
    EvalCorpus,
    EvalSpace,
    Policy,
    calibrated_scores,
    evaluate_policy,
    reference_indices,
)
from tiering.fusion import FusionMethod
from tiering.gain_labels import FloatMatrix, GainLabel, Query, fused_gain_labels, fused_gains
from tiering.normalization import rank_normalize
from tiering.policies import PolicyInputs, premium_selection
from tiering.pricing import Price, cost_usd, price_for
from tiering.settings import ApiModelSettings, LocalModelSettings, TierembedSettings

if TYPE_CHECKING:
    from beam_pipeline.pipeline import ResolvedApi

__all__ = ["api_estimate_usd", "derive_with_real_tiers", "TrainingVectors", "holdout_report"]


class _Versioned(Protocol):
    @property
    def version(self) -> str: ...


_M = TypeVar("_M", bound=_Versioned)


def _pick(models: Sequence[_M], version: str | None, tier: str) -> _M:
    if version is None:
        return models[0]
    for m in models:
        if m.version == version:
            return m
    known = ", ".join(m.version for m in models)
    raise ConfigError(f"no {tier} model version {version!r} in the settings (known: {known})")


def _aggregate(flat: FloatMatrix, counts: Sequence[int]) -> FloatMatrix:
    rows, start = [], 0
    for n in counts:
        rows.append(aggregate_vectors(flat[start : start + n]))
        start += n
    return np.vstack(rows).astype(np.float32)


# ------------------------------------------------------------------------ the tiers


class _LocalTier:
    """The local tier exactly as the pipeline embeds: chunk, encode, aggregate."""

    def __init__(self, settings: TierembedSettings, version: str | None) -> None:
        from beam_pipeline.local_embedder import LocalModelSpec, load_local_model

        model: LocalModelSettings = _pick(settings.local.models, version, "local")
        self.version = model.version
        s = settings.local
        self._model = load_local_model(LocalModelSpec(model.model, s.device, s.precision, s.batch_size,
                                                      model.max_input_tokens))

    def embed_documents(self, texts: Sequence[str]) -> FloatMatrix:
        per_doc = [self._model.chunk(t) for t in texts]
        flat = self._model.encode([c for chunks in per_doc for c in chunks])
        return _aggregate(flat, [len(c) for c in per_doc])

    def embed_queries(self, texts: Sequence[str]) -> FloatMatrix:
        return self._model.encode(list(texts))


class _ApiTier:
    """The API tier through the openai client (its own retries are the one retry layer of
    this offline tool). Counts the billed tokens of every reply."""

    def __init__(self, client: Any, model: ApiModelSettings, document_type: str | None,
                 query_type: str | None, max_tokens_per_input: int) -> None:
        self._client = client
        self._model = model
        self._types = {"document": document_type, "query": query_type}
        self._limit = max_tokens_per_input
        self.billed_tokens = 0
        self.requests = 0

    def _request(self, inputs: list[str], kind: str) -> list[list[float]]:
        extra = {"input_type": self._types[kind]} if self._types[kind] else None
        kwargs: dict[str, Any] = {"model": self._model.model, "input": inputs, "extra_body": extra}
        if self._model.dimensions:
            kwargs["dimensions"] = self._model.dimensions
        self.requests += 1
        reply = self._client.embeddings.create(**kwargs)
        usage = reply.usage
        self.billed_tokens += int(usage.prompt_tokens) if usage else sum(map(estimate_tokens, inputs))
        return [list(d.embedding) for d in sorted(reply.data, key=lambda d: d.index)]

    def _embed(self, texts: Sequence[str], kind: str) -> list[list[float]]:
        out: list[list[float]] = []
        batch: list[str] = []
        tokens = 0
        for text in texts:
            cost = estimate_tokens(text)
            if batch and (len(batch) >= self._model.max_inputs_per_request
                          or tokens + cost > self._model.max_tokens_per_request):
                out += self._request(batch, kind)
                batch, tokens = [], 0
            batch.append(text)
            tokens += cost
        if batch:
            out += self._request(batch, kind)
        return out

    def embed_documents(self, texts: Sequence[str]) -> FloatMatrix:
        per_doc = [chunk_text(t, self._limit) for t in texts]
        flat = np.asarray(self._embed([c for chunks in per_doc for c in chunks], "document"), np.float32)
        return _aggregate(flat, [len(c) for c in per_doc])

    def embed_queries(self, texts: Sequence[str]) -> FloatMatrix:
        vectors = np.asarray(self._embed(list(texts), "query"), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: FloatMatrix = (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)
        return unit


def _open_api_tier(
    make_client: Callable[..., Any], ep: ResolvedApi, settings: TierembedSettings, model: ApiModelSettings
) -> tuple[Any, _ApiTier]:
    client = make_client(api_key=ep.api_key, base_url=ep.base_url, max_retries=3,
                           timeout=settings.api.timeout_s)
    limit = min(model.max_tokens_per_input, ep.max_tokens_per_input or model.max_tokens_per_input)
    return client, _ApiTier(client, model, ep.document_input_type, ep.query_input_type, limit)


# ----------------------------------------------------------------- cost and ledger


def api_estimate_usd(docs: Sequence[Document], queries: Sequence[Query], price_per_token: float) -> float:
    """Estimated API spend of embedding ``docs`` and ``queries`` once each."""
    tokens = sum(estimate_tokens(d.text) for d in docs) + sum(estimate_tokens(q.text) for q in queries)
    return tokens * price_per_token


@dataclass(frozen=True, slots=True)
class _PaidRun:
    """One ``router train`` run in the spend ledger: what it may cost and where it is recorded."""

    ledger: SpendLedger
    run_id: str
    model: ApiModelSettings
    price: Price
    estimate: float


def _begin_paid_run(settings: TierembedSettings, model: ApiModelSettings, docs: int, queries: int,
                    estimate: float, max_cost: float, price: Price) -> _PaidRun:
    """Reserve the estimate in the ledger, or refuse (nothing sent) when it is over budget."""
    ledger = SpendLedger(settings.budget.ledger_path)
    run_id = "router-train-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    grant = ledger.begin_run(run_id, per_run_usd=max_cost, monthly_usd=settings.budget.monthly_usd,
                             source="router train --from-queries")
    if grant.budget_usd is not None and estimate > grant.budget_usd:
        ledger.fail_run(run_id, "estimate over budget; nothing sent", nothing_sent=True)
        raise ConfigError(
            f"embedding {docs} documents and {queries} queries with {model.model} is "
            f"estimated at ${estimate:.6f}, over the ${grant.budget_usd:.6f} allowed (--max-cost and "
            "the month's budget left); lower --sample or raise --max-cost"
        )
    return _PaidRun(ledger, run_id, model, price, estimate)


def _record_spend(run: _PaidRun, documents: int, billed: int) -> None:
    m = run.model
    run.ledger.finish_run(run.run_id, [SpendLine("api", m.version, m.model, documents, billed, run.estimate,
                                                 cost_usd(billed, run.price))])


def _record_failure(run: _PaidRun, api_tier: _ApiTier | None, exc: BaseException) -> None:
    # Billed replies are recorded; a request without a reply may have been billed too,
    # so then the reservation stays charged (an upper bound).
    billed = api_tier.billed_tokens if api_tier else 0
    if billed:
        _record_spend(run, 0, billed)
    else:
        run.ledger.fail_run(run.run_id, f"{type(exc).__name__}: {exc}",
                            nothing_sent=api_tier is None or api_tier.requests == 0)


# ------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class TrainingVectors:
    """The sample and queries embedded by both tiers, and which queries are held out."""

    docs: tuple[Document, ...]
    queries: tuple[Query, ...]
    local: EvalSpace
    api: EvalSpace
    holdout: tuple[bool, ...]
    price_per_token: float

    def corpus(self, held_out: bool) -> EvalCorpus:
        ids = tuple(d.id for d in self.docs)
        qids = tuple(q.id for q, h in zip(self.queries, self.holdout, strict=True) if h == held_out)
        qrels = {q.id: {d: int(round(g)) or 1 for d, g in q.judgements} for q in self.queries}
        return EvalCorpus(ids, qids, qrels, reference_indices(ids, 512))

    def rows(self, held_out: bool) -> list[int]:
        return [i for i, h in enumerate(self.holdout) if h == held_out]


def _space(space: EvalSpace, rows: list[int]) -> EvalSpace:
    return EvalSpace(space.version, space.docs, space.queries[rows], space.reference)


def _fused_labels(vectors: TrainingVectors) -> list[GainLabel]:
    train = vectors.rows(held_out=False)
    corpus = vectors.corpus(held_out=False)
    z_local = calibrated_scores(_space(vectors.local, train), corpus.reference)
    z_api = calibrated_scores(_space(vectors.api, train), corpus.reference)
    index = {d.id: i for i, d in enumerate(vectors.docs)}
    grades = np.zeros(z_local.shape)
    for row, qi in enumerate(train):
        for doc_id, grade in vectors.queries[qi].judgements:
            if doc_id in index:
                grades[row, index[doc_id]] = grade
    gains, touched = fused_gains(z_local, z_api, grades)
    return fused_gain_labels([d.id for d in vectors.docs], gains, touched)


def holdout_report(vectors: TrainingVectors, trained: ValueClassifier, current: ValueClassifier,
                   share: float = 0.3) -> str:
    """nDCG@10 on the held-out queries, within the sample, of coverage at ``share`` of the
    all-premium cost with the current router (rank-normalised) and with the trained one."""
    rows = vectors.rows(held_out=True)
    if not rows:
        return "held-out queries: none (raise --holdout)"
    corpus = vectors.corpus(held_out=True)
    spaces = [_space(vectors.local, rows), _space(vectors.api, rows)]
    ids = tuple(d.id for d in vectors.docs)
    costs = tuple(estimate_tokens(d.text) * vectors.price_per_token for d in vectors.docs)
    n = len(ids)
    lines = [f"held-out retrieval ({len(rows)} queries, {n} sampled documents, coverage, calibrated fusion):"]
    every, none = np.ones(n, bool), np.zeros(n, bool)
    v_local, v_api = vectors.local.version, vectors.api.version
    ends = (("all-local", {v_local: every, v_api: none}), ("all-premium", {v_local: none, v_api: every}))
    for name, holds in ends:
        res = evaluate_policy(spaces, corpus, Policy(name, holds, FusionMethod.ZSCORE))
        lines.append(f"  {name:<28} nDCG@10 {res.mean('nDCG@10'):.4f}")
    for label, clf in (("current router", current), ("trained router", trained)):
        scores = tuple(rank_normalize(clf.score_many(vectors.docs)))
        chosen = premium_selection(PolicyInputs(ids, scores, costs, v_local, v_api), share * sum(costs))
        policy = Policy(label, {v_local: every, v_api: chosen}, FusionMethod.ZSCORE)
        res = evaluate_policy(spaces, corpus, policy)
        lines.append(f"  {label + f' @{share:.0%} cost':<28} nDCG@10 {res.mean('nDCG@10'):.4f} "
                     f"({int(chosen.sum())} premium)")
    return "\n".join(lines)


def derive_with_real_tiers(
    settings: TierembedSettings, sample: list[Document], queries: list[Query], *,
    max_cost: float, local_version: str | None, api_version: str | None, min_gain: float,
    echo: Callable[[str], None], holdout: float = 0.25, seed: int = 0,
) -> tuple[list[GainLabel], TrainingVectors]:
    """Fused-index gain labels for ``sample`` (what each document's premium vector does to
    the calibrated coverage index on the training queries), within budget; raises
    ConfigError (nothing sent) when the estimated API spend is over it. Queries are split
    by a hash of their id: the held-out ones never label anything (see holdout_report)."""
    import openai

    from flows.endpoint import resolve_endpoint

    model = _pick(settings.api.models, api_version, "api")
    price = price_for(model.model, model.price_per_million_tokens)
    estimate = api_estimate_usd(sample, queries, float(price.per_token))
    echo(f"training cost: embedding {len(sample)} documents and {len(queries)} queries with {model.version} "
         f"is estimated at ${estimate:.6f} (--max-cost ${max_cost:.6f}); checking before sending")
    run = _begin_paid_run(settings, model, len(sample), len(queries), estimate, max_cost, price)
    local = _LocalTier(settings, local_version)
    api_tier: _ApiTier | None = None
    texts, q_texts = [d.text for d in sample], [q.text for q in queries]
    try:
        with resolve_endpoint(settings.api) as ep:
            client, api_tier = _open_api_tier(openai.OpenAI, ep, settings, model)
            spaces = [EvalSpace(tier.version if hasattr(tier, "version") else model.version,
                                tier.embed_documents(texts), tier.embed_queries(q_texts))
                      for tier in (local, api_tier)]
            client.close()
    except BaseException as exc:
        _record_failure(run, api_tier, exc)
        raise
    billed = api_tier.billed_tokens if api_tier else 0
    _record_spend(run, len(sample), billed)
    echo(f"API tier billed {billed} tokens (${cost_usd(billed, price):.6f} of ${estimate:.6f} estimated, "
         f"--max-cost ${max_cost:.6f}), recorded in the spend ledger as {run.run_id}")
    held = tuple(in_holdout(q.id, holdout_fraction=holdout, seed=seed) for q in queries)
    vectors = TrainingVectors(tuple(sample), tuple(queries), spaces[0],
                              EvalSpace(model.version, spaces[1].docs, spaces[1].queries), held,
                              float(price.per_token))
    return _fused_labels(vectors), vectors
