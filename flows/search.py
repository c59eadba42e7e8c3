"""Searching the store across model versions.

Vectors from two models live in different spaces, so their cosine scores are not
comparable (merging by raw score cut nDCG@10 from 0.74 to 0.25 in our measurements). The
query is embedded with each model version present in the store, each version is searched
in its own space (its LanceDB table, or its Weaviate named vector), and the rankings are
fused with reciprocal-rank fusion (k=60), which needs no score calibration.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from beam_pipeline.local_embedder import LocalModelSpec, load_local_model
from beam_pipeline.sinks.hits import SearchHit
from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore
from flows.endpoint import resolve_endpoint, settings_for_endpoint
from tiering.errors import ConfigError
from tiering.settings import TierembedSettings

__all__ = ["FusedHit", "VectorStore", "open_store", "search_store", "rrf_fuse"]

RRF_K = 60


@dataclass
class FusedHit:
    id: str
    fused: float
    text: str
    versions: dict[str, int] = field(default_factory=dict)  # version -> rank
    scores: dict[str, float] = field(default_factory=dict)  # version -> cosine, per space


class VectorStore(Protocol):
    """What searching needs from a sink's store (LanceDBStore, WeaviateStore)."""

    def count(self, version: str) -> int: ...

    def search(self, version: str, vector: list[float], k: int) -> list[SearchHit]: ...


@contextmanager
def open_store(settings: TierembedSettings) -> Iterator[VectorStore]:
    """The configured store (sink.kind), closed on exit."""
    if settings.sink.kind == "weaviate":
        from beam_pipeline.sinks.weaviate_sink import WeaviateSinkConfig, WeaviateStore

        with WeaviateStore(WeaviateSinkConfig.from_settings(settings.sink)) as store:
            yield store
        return
    lc = settings.sink.lancedb
    yield LanceDBStore(LanceDBSinkConfig(lc.uri, lc.table_prefix))


def rrf_fuse(per_version: dict[str, list[SearchHit]], k: int) -> list[FusedHit]:
    fused: dict[str, FusedHit] = {}
    for version, hits in per_version.items():
        for rank, hit in enumerate(hits, start=1):
            entry = fused.setdefault(hit.id, FusedHit(hit.id, 0.0, hit.text))
            entry.fused += 1.0 / (RRF_K + rank)
            entry.versions[version] = rank
            entry.scores[version] = round(hit.score, 4)
    return sorted(fused.values(), key=lambda h: (-h.fused, h.id))[:k]


def _embed_query_local(settings: TierembedSettings, version: str, query: str) -> list[float]:
    model = next(m for m in settings.local.models if m.version == version)
    loaded = load_local_model(LocalModelSpec(model.model, settings.local.device,
                                             "fp32", 1, model.max_input_tokens))
    return [float(x) for x in loaded.encode([query])[0]]


def _embed_query_api(settings: TierembedSettings, versions: list[str], query: str) -> dict[str, list[float]]:
    import openai

    out: dict[str, list[float]] = {}
    with resolve_endpoint(settings.api) as api:
        client = openai.OpenAI(api_key=api.api_key, base_url=api.base_url, max_retries=3)
        for version in versions:
            model = next(m for m in settings.api.models if m.version == version)
            extra = {"input_type": api.query_input_type} if api.query_input_type else None
            reply = client.embeddings.create(model=model.model, input=[query], extra_body=extra)
            out[version] = list(reply.data[0].embedding)
        client.close()
    return out


def search_store(
    settings: TierembedSettings, query: str, *, k: int = 5, only_version: str | None = None
) -> list[FusedHit]:
    """Search every model version present in the configured store (LanceDB or Weaviate)."""
    settings = settings_for_endpoint(settings)  # same version names as the run used
    with open_store(settings) as store:
        return _search(settings, store, query, k, only_version)


def _search(
    settings: TierembedSettings, store: VectorStore, query: str, k: int, only_version: str | None
) -> list[FusedHit]:
    configured = [m.version for m in settings.local.models] + [m.version for m in settings.api.models]
    present = [v for v in configured if store.count(v) > 0]
    if only_version:
        if only_version not in present:
            raise ConfigError(f"model version {only_version!r} is not in the store; present: {present}")
        present = [only_version]
    local_versions = {m.version for m in settings.local.models}
    api_versions = [v for v in present if v in {m.version for m in settings.api.models}]
    vectors: dict[str, list[float]] = defaultdict(list)
    for v in present:
        if v in local_versions:
            vectors[v] = _embed_query_local(settings, v, query)
    if api_versions:
        vectors.update(_embed_query_api(settings, api_versions, query))
    per_version = {v: store.search(v, vectors[v], max(k * 4, 20)) for v in vectors}
    return rrf_fuse(per_version, k)
