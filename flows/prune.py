"""Pruning the store: remove the vectors whose document left the source or moved to another
model version (``tierembed prune``).

Thin orchestration around :mod:`tiering.prune` (the rules live there): read SOURCE with the
pipeline's own reader and validator (:func:`beam_pipeline.read.read_file`,
:func:`tiering.validation.validate_record`, duplicates resolved as a run resolves them), so
ids and content hashes are exactly what runs stored; read every stored row of the configured
store (LanceDB or Weaviate); take live and retired versions from the registry; plan; and,
only when asked, delete the planned rows version by version. A delete removes a row only
while it still holds the planned content hash, so a run that re-embedded a document between
the plan and the delete keeps its vector.

Memory: the source's ids and hashes and the store's (id, version, hash, time) rows are held
in memory (about 200 bytes a row): fine for millions of rows, not for billions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flows.endpoint import settings_for_endpoint
from store.registry import open_registry
from tiering.documents import DeadLetter, Document
from tiering.prune import PrunePlan, PruneReason, SourceDocs, collect_source, plan_prune
from tiering.settings import TierembedSettings
from tiering.validation import ValidationRules, validate_record
from tiering.versions import VersionState

__all__ = ["PruneOutcome", "read_source", "open_prune_store", "prune_store"]

SAMPLE_IDS = 5  # ids shown per (version, reason) in the text report


@dataclass
class PruneOutcome:
    """A prune's plan and, with ``applied``, what the store really deleted per version."""

    source: str
    store: str
    source_documents: int
    rejected_with_id: int
    plan: PrunePlan
    applied: bool
    deleted: dict[str, int] = field(default_factory=dict)
    live: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {}
        for (version, reason), n in sorted(self.plan.counts().items()):
            counts.setdefault(version, {})[reason.value] = n
        return {
            "source": self.source, "store": self.store, "applied": self.applied,
            "source_documents": self.source_documents, "rejected_with_id": self.rejected_with_id,
            "unidentified_records": self.plan.unidentified,
            "unidentified_at": list(self.plan.unidentified_at),
            "rows_scanned": self.plan.rows_scanned, "stale": counts, "stale_total": len(self.plan.stale),
            "deleted": dict(sorted(self.deleted.items())), "deleted_total": sum(self.deleted.values()),
            "withheld_left_source": self.plan.withheld_left_source, "retired_kept": self.plan.retired_kept,
            "live": list(self.live), "retired": list(self.retired),
            "stale_rows": [{"id": s.row.doc_id, "version": s.row.version, "reason": s.reason.value,
                            "content_hash": s.row.content_hash} for s in self.plan.stale],
        }

    def samples(self) -> dict[tuple[str, PruneReason], list[str]]:
        out: dict[tuple[str, PruneReason], list[str]] = {}
        for s in self.plan.stale:
            ids = out.setdefault((s.row.version, s.reason), [])
            if len(ids) < SAMPLE_IDS:
                ids.append(s.row.doc_id)
        return out


def _validated(source: str, settings: TierembedSettings) -> Iterator[Document | DeadLetter]:
    from beam_pipeline.read import match_sources, read_file

    s = settings.input
    rules = ValidationRules(s.id_field, s.text_field, s.metadata_field, s.max_text_chars)
    for path in match_sources(source, s.format):
        for raw in read_file(path, s.format, s.max_record_bytes):
            yield validate_record(raw, rules)


def read_source(source: str, settings: TierembedSettings) -> SourceDocs:
    """SOURCE as a run reads it (raises InputNotFoundError when nothing matches)."""
    return collect_source(_validated(source, settings))


@contextmanager
def open_prune_store(settings: TierembedSettings) -> Iterator[Any]:
    """The configured store with ``stored_rows()`` and ``delete(version, {id: hash})``."""
    if settings.sink.kind == "weaviate":
        from beam_pipeline.sinks.weaviate_sink import WeaviateSinkConfig, WeaviateStore

        with WeaviateStore(WeaviateSinkConfig.from_settings(settings.sink)) as store:
            yield store
        return
    from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore

    lc = settings.sink.lancedb
    yield LanceDBStore(LanceDBSinkConfig(lc.uri, lc.table_prefix))


def _store_name(settings: TierembedSettings) -> str:
    s = settings.sink
    if s.kind == "weaviate":
        return f"weaviate {s.weaviate.url} collection {s.weaviate.collection}"
    return f"lancedb {s.lancedb.uri} tables {s.lancedb.table_prefix}__*"


def prune_store(settings: TierembedSettings, source: str, *, apply: bool = False,
                include_retired: bool = False, despite_unidentified: bool = False) -> PruneOutcome:
    """Plan the prune of the configured store against SOURCE; delete the plan with ``apply``."""
    settings = settings_for_endpoint(settings)  # the version names runs really store under
    docs = read_source(source, settings)
    _, registry = open_registry(settings, by="prune")
    live = registry.served()
    retired = tuple(e.version for e in registry.in_state(VersionState.RETIRED))
    with open_prune_store(settings) as store:
        plan = plan_prune(docs, store.stored_rows(), live=live, retired=retired,
                          include_retired=include_retired, despite_unidentified=despite_unidentified)
        deleted: dict[str, int] = {}
        if apply:
            for version, ids in plan.by_version().items():
                hashes = {s.row.doc_id: s.row.content_hash for s in plan.stale if s.row.version == version}
                deleted[version] = store.delete(version, {i: hashes[i] for i in ids})
    return PruneOutcome(source, _store_name(settings), len(docs.current), len(docs.rejected_ids), plan, apply,
                        deleted, tuple(live), retired)
