"""``tierembed models compare V1 V2``: two model versions measured on the documents both
embedded, recorded as the evidence ``tierembed models promote`` reads.

Reads both versions' tables from the store, keeps the documents both hold (a shadow
sample, a backfill), embeds the labelled queries with each version (paid ones go through
the pipeline's API client and are recorded in the spend ledger under a ``compare`` run;
every query vector is cached beside eval's, so a second comparison is free), and hands the
arithmetic to :func:`tiering.compare.compare_versions`. Cost per 1k documents is each
version's billed API spend as stored with its documents (``cost_usd``), over the
documents it holds: 0 for a local model (no API spend; its compute is not priced here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flows.embedders import TierEmbedders, open_embedders
from flows.endpoint import settings_for_endpoint
from flows.eval import read_qrels, read_queries
from store.registry import open_registry
from store.vector_cache import VectorCache, query_key
from store.vector_reader import StoredVersion, open_reader
from tiering.compare import Evidence, VersionComparison, compare_versions, shared_corpus
from tiering.errors import ConfigError
from tiering.settings import TierembedSettings

__all__ = ["CompareOptions", "CompareReport", "compare_store", "render_comparison"]


@dataclass(frozen=True)
class CompareOptions:
    baseline: str
    candidate: str
    queries: Path
    qrels: Path
    cache_dir: Path = Path(".tierembed/eval-cache")
    resamples: int = 2000
    record: bool = True
    k: int = 10
    by: str = ""


@dataclass(frozen=True)
class CompareReport:
    comparison: VersionComparison
    evidence: Evidence
    tiers: dict[str, str]
    spent_usd: float
    judged_outside: int
    """Judged documents of the kept queries that are not in the shared corpus."""

    def to_json(self) -> dict[str, Any]:
        c = self.comparison
        return {
            "baseline": c.baseline.version, "candidate": c.candidate.version,
            "shared_documents": len(c.shared.ids),
            "left_out": {c.baseline.version: c.shared.left_out[0], c.candidate.version: c.shared.left_out[1]},
            "queries": c.queries, "queries_left_out": c.queries_left_out,
            "judged_outside_shared": self.judged_outside,
            "versions": [{"version": q.version, "tier": self.tiers.get(q.version, ""), "means": dict(q.means),
                          "documents": q.documents, "cost_usd": q.cost_usd,
                          "cost_per_1k_docs_usd": q.cost_per_1k_docs} for q in (c.baseline, c.candidate)],
            "difference": {m: {"diff": d.diff, "low": d.low, "high": d.high, "confidence": d.confidence,
                               "resamples": d.resamples} for m, d in c.differences.items()},
            "verdict": c.verdict(), "recorded_at": self.evidence.at, "spent_usd": self.spent_usd,
        }


def _tiers(settings: TierembedSettings) -> dict[str, str]:
    local = {m.version: "local" for m in settings.local.models}
    return local | {m.version: "api" for m in settings.api.models}


def _rows(stored: StoredVersion, ids: Sequence[str]) -> np.ndarray:
    index = {doc_id: n for n, doc_id in enumerate(stored.ids)}
    return np.asarray(stored.vectors[[index[i] for i in ids]], dtype=np.float32)


def _query_vectors(embedders: TierEmbedders, cache: VectorCache, version: str,
                   queries: Sequence[tuple[str, str]]) -> np.ndarray:
    todo = sorted({t for _, t in queries if cache.get(version, query_key(t)) is None})
    if todo:
        cache.put(version, [query_key(t) for t in todo], embedders[version].embed_queries(todo))
    rows = [cache.get(version, query_key(t)) for _, t in queries]
    return np.vstack([r for r in rows if r is not None]).astype(np.float32)


def _check_versions(settings: TierembedSettings, opts: CompareOptions) -> dict[str, str]:
    tiers = _tiers(settings)
    for v in (opts.baseline, opts.candidate):
        if v not in tiers:
            raise ConfigError(f"model version {v!r} is not declared in local.models or api.models "
                              f"(declared: {', '.join(tiers)})")
    if opts.baseline == opts.candidate:
        raise ConfigError(f"compare needs two different versions, got {opts.baseline!r} twice")
    return tiers


def compare_store(settings: TierembedSettings, opts: CompareOptions) -> CompareReport:
    """Compare ``opts.candidate`` with ``opts.baseline`` on the documents both hold."""
    settings = settings_for_endpoint(settings)  # the version names the runs used
    tiers = _check_versions(settings, opts)
    queries, qrels = read_queries(opts.queries), read_qrels(opts.qrels)
    reader = open_reader(settings)
    try:
        stored = {v: reader.read_version(v) for v in (opts.baseline, opts.candidate)}
    finally:
        reader.close()
    for v, sv in stored.items():
        if not sv.ids:
            raise ConfigError(f"model version {v!r} holds no document in the store; embed some with "
                              f"`tierembed models shadow {v}` and a run, or "
                              f"`tierembed models backfill {v} SOURCE`")
    shared = shared_corpus(stored[opts.baseline].ids, stored[opts.candidate].ids)
    if not shared.ids:
        raise ConfigError(f"{opts.baseline} and {opts.candidate} share no document in the store; shadow or "
                          f"backfill {opts.candidate} on documents {opts.baseline} holds")
    need_api = any(tiers[v] == "api" for v in (opts.baseline, opts.candidate))
    cache = VectorCache(opts.cache_dir)
    with open_embedders(settings, "compare", need_api=need_api) as embedders:
        vectors = {v: _query_vectors(embedders, cache, v, queries) for v in (opts.baseline, opts.candidate)}
        spent = embedders.spend.cost_usd
    qids = [q for q, _ in queries]
    try:
        a, b = ((v, _rows(stored[v], shared.ids), vectors[v]) for v in (opts.baseline, opts.candidate))
        comparison = compare_versions(
            a, b, shared, qids, qrels, held=(len(stored[opts.baseline].ids), len(stored[opts.candidate].ids)),
            cost_usd=(stored[opts.baseline].cost_usd, stored[opts.candidate].cost_usd),
            k=opts.k, resamples=opts.resamples)
    except ValueError as exc:
        raise ConfigError(f"cannot compare {opts.baseline} and {opts.candidate} on {opts.qrels}: {exc} "
                          f"({len(shared.ids)} shared documents); shadow or backfill more "
                          "documents") from None
    relevant = {d for q in comparison.query_ids for d, g in qrels.get(q, {}).items() if g > 0}
    judged_outside = len(relevant - set(shared.ids))
    evidence = Evidence.of(comparison, f"{opts.queries.name} + {opts.qrels.name}")
    if opts.record:
        registry, _ = open_registry(settings, by=opts.by or "compare")
        evidence = registry.record_comparison(evidence, by=opts.by or "compare")
    return CompareReport(comparison, evidence, tiers, round(spent, 6), judged_outside)



def render_comparison(report: CompareReport, width: int = 130) -> str:
    """The comparison as a ``rich`` table and the verdict, as text."""
    from rich.console import Console
    from rich.table import Table

    c = report.comparison
    left = c.shared.left_out
    table = Table(title=f"{c.candidate.version} vs {c.baseline.version}: {c.queries} queries on the "
                  f"{len(c.shared.ids)} documents both embedded (paired bootstrap CIs)",
                  title_justify="left")
    for name in ("version", "tier", "its docs not shared", *(_label(m) for m in c.differences)):
        table.add_column(name, justify="left" if name in ("version", "tier") else "right")
    for q, n in ((c.baseline, left[0]), (c.candidate, left[1])):
        table.add_row(q.version, report.tiers.get(q.version, "?"), str(n),
                      *(f"{q.means[m]:.4f}" for m in c.differences))
    conf = next(iter(c.differences.values())).confidence
    table.add_row(f"{c.candidate.version} - {c.baseline.version}", "", "",
                  *(f"{d.diff:+.4f}" for d in c.differences.values()))
    table.add_row(f"  {conf:.0%} CI", "", "",
                  *(f"[{d.low:+.4f}, {d.high:+.4f}]" for d in c.differences.values()))
    costs = Table(title="cost of the embedded documents (billed API spend, as stored)", title_justify="left")
    for name in ("version", "documents", "cost", "per 1k documents"):
        costs.add_column(name, justify="left" if name == "version" else "right")
    for q in (c.baseline, c.candidate):
        note = "  (local: no API spend)" if report.tiers.get(q.version) == "local" else ""
        costs.add_row(q.version, str(q.documents), f"${q.cost_usd:.6f}", f"${q.cost_per_1k_docs:.6f}{note}")
    console = Console(width=width, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
        console.print(costs)
        if c.queries_left_out:
            console.print(f"note: {c.queries_left_out} labelled queries have no relevant document among the "
                          "shared documents and were left out")
        if report.judged_outside:
            console.print(f"note: {report.judged_outside} relevant documents of the kept queries are not "
                          "shared by both versions (not found by either)")
        if report.spent_usd:
            console.print(f"embedding the queries cost ${report.spent_usd:.6f} "
                          "(recorded in the spend ledger)")
        e = report.evidence
        console.print(f"verdict: {c.candidate.version} is {c.verdict()} than {c.baseline.version} on "
                      f"{e.measure}" if c.verdict() != "not measurably different" else
                      f"verdict: {c.candidate.version} is not measurably different from "
                      f"{c.baseline.version} on {e.measure} (the interval contains 0)")
        if e.at:
            console.print(f"recorded {e.at} in the version registry: `tierembed models promote` reads it")
    return capture.get()


def _label(measure: str) -> str:
    return "M" + measure if measure.startswith("RR@") else measure
