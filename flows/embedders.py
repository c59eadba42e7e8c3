"""Embedding outside the pipeline: queries for search and eval, reference samples for
calibration, and the documents ``router train`` and ``eval`` compare tiers on.

One way to call the API: the API tier goes through the pipeline's own client,
:class:`beam_pipeline.api_embedder.ApiEmbedder` (its limits, its one retry layer, its
billing from ``usage``), and every billed reply is added to the spend ledger at once
(:meth:`store.ledger.SpendLedger.add_spend`) under one ledger run per process, so a query
paid for is counted in ``tierembed budget status`` like a document. Local models are
loaded once per process and kept (search over many queries, eval) instead of once per
call.

Heavy imports (torch through the local embedder, openai through the API embedder) happen
when a model is first used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from store.ledger import SpendLedger, SpendLine
from tiering.backoff import BackoffPolicy
from tiering.chunking import aggregate_vectors, chunk_text, estimate_tokens
from tiering.errors import ConfigError, TransientError
from tiering.gain_labels import FloatMatrix
from tiering.packing import RequestLimits
from tiering.pricing import Price, cost_usd, price_for
from tiering.settings import ApiModelSettings, LocalModelSettings, TierembedSettings

if TYPE_CHECKING:
    from beam_pipeline.api_embedder import ApiEmbedder, ApiEmbedderConfig
    from beam_pipeline.local_embedder import LoadedLocalModel
    from beam_pipeline.pipeline import ResolvedApi

__all__ = ["SpendRecorder", "LocalTierEmbedder", "ApiTierEmbedder", "TierEmbedders", "api_config",
           "open_embedders"]

_log = logging.getLogger(__name__)


def _normalized(rows: FloatMatrix) -> FloatMatrix:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: FloatMatrix = (rows / np.where(norms == 0, 1.0, norms)).astype(np.float32)
    return out


def _aggregate(flat: FloatMatrix, counts: Sequence[int], dim: int) -> FloatMatrix:
    rows, start = [], 0
    for n in counts:
        rows.append(aggregate_vectors(flat[start : start + n]))
        start += n
    return np.vstack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)


@dataclass
class SpendRecorder:
    """One ledger run for this process's API calls (kind ``search``, ``eval`` or
    ``router-train``): every billed reply is added as it arrives; :meth:`close` settles."""

    ledger: SpendLedger
    run_id: str
    lines: dict[str, SpendLine] = field(default_factory=dict)
    begun: bool = False

    @classmethod
    def open(cls, settings: TierembedSettings, kind: str) -> SpendRecorder:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return cls(SpendLedger(settings.budget.ledger_path), f"{kind}-{stamp}")

    def record(self, model: ApiModelSettings, documents: int, billed: int, est: float, cost: float) -> None:
        if not self.begun:
            self.ledger.begin_run(self.run_id, per_run_usd=None, monthly_usd=None,
                                  source=self.run_id.rsplit("-", 1)[0])
            self.begun = True
        line = SpendLine("api", model.version, model.model, documents, billed, est, cost)
        self.ledger.add_spend(self.run_id, line)
        old = self.lines.get(model.version)
        if old is not None:
            line = SpendLine("api", model.version, model.model, old.documents + documents,
                             old.billed_tokens + billed, old.est_cost_usd + est, old.cost_usd + cost)
        self.lines[model.version] = line

    @property
    def cost_usd(self) -> float:
        return sum(x.cost_usd for x in self.lines.values())

    def close(self) -> None:
        if self.begun:
            self.ledger.finish_run(self.run_id, list(self.lines.values()))


class LocalTierEmbedder:
    """A local model version, loaded once: documents chunked and aggregated exactly as the
    pipeline embeds them; queries encoded whole."""

    tier = "local"

    def __init__(self, settings: TierembedSettings, model: LocalModelSettings) -> None:
        self.version = model.version
        self._settings = settings
        self._model_settings = model
        self._model: LoadedLocalModel | None = None

    def _loaded(self) -> LoadedLocalModel:
        if self._model is None:
            from beam_pipeline.local_embedder import LocalModelSpec, load_local_model

            s, m = self._settings.local, self._model_settings
            self._model = load_local_model(LocalModelSpec(m.model, s.device, s.precision, s.batch_size,
                                                          m.max_input_tokens))
        return self._model

    def estimate_usd(self, texts: Sequence[str]) -> float:
        return 0.0

    def embed_documents(self, texts: Sequence[str]) -> FloatMatrix:
        model = self._loaded()
        per_doc = [model.chunk(t) for t in texts]
        flat = model.encode([c for chunks in per_doc for c in chunks])
        return _aggregate(flat, [len(c) for c in per_doc], model.dimension)

    def embed_queries(self, texts: Sequence[str]) -> FloatMatrix:
        return self._loaded().encode(list(texts))


def api_config(settings: TierembedSettings, api: ResolvedApi, model: ApiModelSettings,
               input_type: str | None) -> ApiEmbedderConfig:
    """The pipeline's embedder configuration for one API model version, for a process that
    is the only API worker (search, eval, router training)."""
    from beam_pipeline.api_embedder import ApiEmbedderConfig

    s = settings.api
    return ApiEmbedderConfig(
        base_url=api.base_url, api_key=api.api_key, model=model.model, provider=api.provider,
        limits=RequestLimits(
            model.max_inputs_per_request,
            min(model.max_tokens_per_request, api.max_tokens_per_request or model.max_tokens_per_request),
            min(model.max_tokens_per_input, api.max_tokens_per_input or model.max_tokens_per_input)),
        requests_per_minute=s.requests_per_minute, tokens_per_minute=s.tokens_per_minute,
        max_in_flight=s.max_in_flight, timeout_s=s.timeout_s,
        backoff=BackoffPolicy(s.retry.base_delay_s, s.retry.max_delay_s, s.retry.max_attempts,
                              s.retry.max_total_s),
        breaker_failure_threshold=s.breaker.failure_threshold,
        breaker_reset_after_s=s.breaker.reset_after_s, dimensions=model.dimensions,
        input_type=input_type, price=price_for(model.model, model.price_per_million_tokens),
    )


class ApiTierEmbedder:
    """An API model version through :class:`ApiEmbedder` (one per input type), every billed
    reply recorded in the spend ledger. A text the API could not embed raises
    :class:`TransientError` naming it (nothing is silently dropped)."""

    tier = "api"

    def __init__(self, settings: TierembedSettings, api: ResolvedApi, model: ApiModelSettings,
                 spend: SpendRecorder) -> None:
        self.version = model.version
        self.model = model
        self.price: Price = price_for(model.model, model.price_per_million_tokens)
        self._settings = settings
        self._api = api
        self._spend = spend
        self._embedders: dict[str, ApiEmbedder] = {}

    def _embedder(self, kind: str) -> ApiEmbedder:
        if kind not in self._embedders:
            from beam_pipeline.api_embedder import ApiEmbedder

            input_type = self._api.query_input_type if kind == "query" else self._api.document_input_type
            self._embedders[kind] = ApiEmbedder(api_config(self._settings, self._api, self.model, input_type))
        return self._embedders[kind]

    def estimate_usd(self, texts: Sequence[str]) -> float:
        return sum(estimate_tokens(t) for t in texts) * float(self.price.per_token)

    def _embed(self, texts: Sequence[str], kind: str, documents: int) -> FloatMatrix:
        from beam_pipeline.api_embedder import ApiInput

        embedder = self._embedder(kind)
        inputs = [ApiInput(t, estimate_tokens(t), group=i) for i, t in enumerate(texts)]
        outcome = embedder.embed(inputs)
        billed = sum(outcome.billed_tokens.values())
        est = sum(i.est_tokens for i in inputs) * float(self.price.per_token)
        if billed or outcome.vectors:
            self._spend.record(self.model, documents, billed, est, cost_usd(billed, self.price))
        missing = [i for i in range(len(texts)) if i not in outcome.vectors]
        if missing:
            failure = outcome.failures.get(missing[0])
            why = failure.message if failure else "not sent (circuit open or over budget)"
            raise TransientError(f"API model version {self.version!r} did not embed {len(missing)} of "
                                 f"{len(texts)} {kind} texts (first: {texts[missing[0]][:60]!r}): {why}; "
                                 "check api.base_url and the endpoint, then retry", stage=kind,
                                 model_version=self.version)
        return np.asarray([outcome.vectors[i] for i in range(len(texts))], dtype=np.float32)

    def embed_documents(self, texts: Sequence[str]) -> FloatMatrix:
        limit = self._embedder("document").max_tokens_per_input
        per_doc = [chunk_text(t, limit) for t in texts]
        flat = self._embed([c for chunks in per_doc for c in chunks], "document", len(texts))
        dim = flat.shape[1] if flat.size else 0
        return _aggregate(_normalized(flat), [len(c) for c in per_doc], dim)

    def embed_queries(self, texts: Sequence[str]) -> FloatMatrix:
        return _normalized(self._embed(list(texts), "query", 0))

    def close(self) -> None:
        for embedder in self._embedders.values():
            embedder.close()
        self._embedders.clear()


@dataclass
class TierEmbedders:
    """Every configured model version's embedder, loaded on first use and kept."""

    by_version: dict[str, LocalTierEmbedder | ApiTierEmbedder]
    spend: SpendRecorder

    def __getitem__(self, version: str) -> LocalTierEmbedder | ApiTierEmbedder:
        try:
            return self.by_version[version]
        except KeyError:
            raise ConfigError(f"model version {version!r} is not configured (known: "
                              f"{sorted(self.by_version)}); add it to local.models or api.models") from None


@contextmanager
def open_embedders(
    settings: TierembedSettings, kind: str, *, need_api: bool = True
) -> Iterator[TierEmbedders]:
    """Embedders for every configured version; the API endpoint (a stand-in server too) is
    resolved once and kept for the whole block; the ledger run is settled on exit."""
    from flows.endpoint import resolve_endpoint

    spend = SpendRecorder.open(settings, kind)
    by_version: dict[str, Any] = {m.version: LocalTierEmbedder(settings, m) for m in settings.local.models}
    with ExitStack() as stack:
        stack.callback(spend.close)
        if need_api:
            api = stack.enter_context(resolve_endpoint(settings.api))
            for m in settings.api.models:
                embedder = ApiTierEmbedder(settings, api, m, spend)
                stack.callback(embedder.close)
                by_version[m.version] = embedder
        yield TierEmbedders(by_version, spend)
