"""Pruning: which stored vectors no longer stand for a document of the source.

A run upserts; it never deletes. So a store keeps the vectors of documents that left the
source, and, when a changed document is routed to another model version, the old version
keeps the vector of the old text. ``tierembed prune`` reads the source the way a run does
(the same reader and validator, so ids and content hashes match what runs store), reads
every stored row (id, model version, content hash, embedded_at), and asks
:func:`plan_prune` which rows are stale, with one reason per row. Pure: no I/O, no clock.

The rules are conservative - when in doubt, a vector stays:

``left_source``
    The row's document id is not in the source. A record that validation rejected but whose
    id is known (empty text, text too long, bad metadata, a duplicate id) keeps its id in the
    source: a record that became unreadable this time never costs its vectors. When some
    records could not be tied to any id at all (a line that is not JSON, a record without an
    id, a file that could not be read to its end), any of them may be a stored document, so
    nothing is pruned for this reason (the rows are counted as *withheld*) unless the caller
    explicitly accepts it (``despite_unidentified``).
``moved``
    The document is in the source with text hash H; the row was embedded from another text;
    another model version that is not retired holds the document embedded from H; and when
    the row's version is live, that other version is live too - so search never loses the
    document's current text. A changed document that is re-embedded by the same version is
    replaced in place by the run and never shows up here; one whose new text no version has
    embedded yet (it failed, or the run has not happened) keeps its old vector.
``retired``
    Only when asked (``include_retired``): every row of a version the registry retired.

The first rule that applies names the reason (in the order above). A document whose text
did not change but is held by two versions (coverage mode, a shadow sample, a backfill) is
never stale: both vectors embed its current text.

:func:`superseded` is the search-time guard that needs no source: a hit from version V is
dropped when another served version holds the same id embedded from different text, later.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from tiering.documents import DeadLetter, Document
from tiering.validation import resolve_duplicates

__all__ = [
    "PruneReason",
    "StoredRow",
    "RowStamp",
    "SourceDocs",
    "StaleRow",
    "PrunePlan",
    "collect_source",
    "plan_prune",
    "superseded",
]

UNIDENTIFIED_SHOWN = 10  # locations of id-less records kept for the message


class PruneReason(StrEnum):
    LEFT_SOURCE = "left_source"
    MOVED = "moved"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One (document, model version) row of the store."""

    doc_id: str
    version: str
    content_hash: str
    embedded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RowStamp:
    """What search needs to tell a current vector from a superseded one."""

    content_hash: str
    embedded_at: datetime | None


@dataclass(frozen=True, slots=True)
class SourceDocs:
    """The source as a run reads it: each valid document's id and content hash, the ids of
    records rejected with their id known, and where id-less records are."""

    current: Mapping[str, str]
    rejected_ids: frozenset[str] = frozenset()
    unidentified: int = 0
    unidentified_at: tuple[str, ...] = ()

    def knows(self, doc_id: str) -> bool:
        return doc_id in self.current or doc_id in self.rejected_ids


def collect_source(items: Iterable[Document | DeadLetter]) -> SourceDocs:
    """Fold validated records (:func:`tiering.validation.validate_record` results, every
    record of the source) into :class:`SourceDocs`. Duplicate ids resolve as in a run: the
    first in source order is the document (:func:`tiering.validation.resolve_duplicates`)."""
    kept: dict[str, Document] = {}
    rejected: set[str] = set()
    unidentified, where = 0, list[str]()
    for item in items:
        if isinstance(item, DeadLetter):
            if item.doc_id is not None:
                rejected.add(item.doc_id)
                continue
            unidentified += 1
            if len(where) < UNIDENTIFIED_SHOWN:
                where.append(item.source)
            continue
        slim = Document(item.id, "", item.source, "{}", item.hash)  # the text is not needed
        other = kept.get(item.id)
        kept[item.id] = slim if other is None else resolve_duplicates(item.id, [other, slim])[0]
    return SourceDocs({i: d.hash for i, d in kept.items()}, frozenset(rejected), unidentified, tuple(where))


@dataclass(frozen=True, slots=True)
class StaleRow:
    row: StoredRow
    reason: PruneReason


@dataclass(frozen=True)
class PrunePlan:
    """What a prune removes (``stale``), and what it left alone and why."""

    stale: tuple[StaleRow, ...]
    rows_scanned: int
    withheld_left_source: int = 0
    """Rows whose id is not in the source, kept because some records had no readable id."""
    unidentified: int = 0
    unidentified_at: tuple[str, ...] = ()
    retired_kept: int = 0
    """Rows of retired versions kept because ``include_retired`` was not given."""
    versions: tuple[str, ...] = field(default=())

    def counts(self) -> dict[tuple[str, PruneReason], int]:
        """Stale rows per (model version, reason)."""
        return dict(Counter((s.row.version, s.reason) for s in self.stale))

    def ids(self, version: str, reason: PruneReason | None = None) -> set[str]:
        return {s.row.doc_id for s in self.stale
                if s.row.version == version and (reason is None or s.reason is reason)}

    def by_version(self) -> dict[str, list[str]]:
        """The ids to delete per version (what the store's ``delete`` takes)."""
        out: dict[str, list[str]] = defaultdict(list)
        for s in self.stale:
            out[s.row.version].append(s.row.doc_id)
        return {v: sorted(ids) for v, ids in sorted(out.items())}


def plan_prune(source: SourceDocs, rows: Iterable[StoredRow], *, live: Collection[str],
               retired: Collection[str], include_retired: bool = False,
               despite_unidentified: bool = False) -> PrunePlan:
    """The stale rows of ``rows`` (every row of the store), by the rules in the module doc."""
    rows = list(rows)
    # versions (not retired) holding each document embedded from its current text
    current_in: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r.version not in retired and source.current.get(r.doc_id) == r.content_hash:
            current_in[r.doc_id].add(r.version)
    may_leave = source.unidentified == 0 or despite_unidentified
    stale: list[StaleRow] = []
    withheld = retired_kept = 0
    for r in rows:
        reason = _reason(r, source, current_in, live, may_leave)
        if reason is None and r.version in retired:
            if include_retired:
                reason = PruneReason.RETIRED
            else:
                retired_kept += 1
        if reason is None and not may_leave and not source.knows(r.doc_id):
            withheld += 1
        if reason is not None:
            stale.append(StaleRow(r, reason))
    stale.sort(key=lambda s: (s.row.version, s.reason.value, s.row.doc_id))
    return PrunePlan(tuple(stale), len(rows), withheld, source.unidentified, source.unidentified_at,
                     retired_kept, tuple(sorted({r.version for r in rows})))


def _reason(row: StoredRow, source: SourceDocs, current_in: Mapping[str, set[str]],
            live: Collection[str], may_leave: bool) -> PruneReason | None:
    if not source.knows(row.doc_id):
        return PruneReason.LEFT_SOURCE if may_leave else None
    now = source.current.get(row.doc_id)
    if now is None or row.content_hash == now:
        return None  # rejected this time (kept), or embedded from the current text
    holders = current_in.get(row.doc_id, set()) - {row.version}
    if row.version in live:
        holders = {v for v in holders if v in live}
    return PruneReason.MOVED if holders else None


def superseded(stamps: Mapping[str, Mapping[str, RowStamp]]) -> set[tuple[str, str]]:
    """(version, doc id) pairs search must not return.

    ``stamps`` maps each served version to the stamps of the candidate documents it holds.
    A version's vector of a document is superseded when another served version holds the
    same document embedded from different text at a later time: the document changed and
    was routed there. Rows without a time are never dropped (nothing to order them by).
    """
    out: set[tuple[str, str]] = set()
    by_doc: dict[str, list[tuple[str, RowStamp]]] = defaultdict(list)
    for version, held in stamps.items():
        for doc_id, stamp in held.items():
            by_doc[doc_id].append((version, stamp))
    for doc_id, held_by in by_doc.items():
        for version, mine in held_by:
            if mine.embedded_at is None:
                continue
            if any(other.content_hash != mine.content_hash and other.embedded_at is not None
                   and other.embedded_at > mine.embedded_at for v, other in held_by if v != version):
                out.add((version, doc_id))
    return out
