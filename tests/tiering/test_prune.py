"""Which stored rows prune removes, and which search hides (tiering.prune)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tiering.documents import DeadLetter, Document, content_hash
from tiering.prune import (
    PruneReason,
    RowStamp,
    SourceDocs,
    StoredRow,
    collect_source,
    plan_prune,
    superseded,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIVE = {"local-a", "api-a"}


def _doc(doc_id: str, text: str, source: str = "f.jsonl:1") -> Document:
    return Document(doc_id, text, source, "{}", content_hash(text))


def _row(doc_id: str, version: str, text: str, minutes: int = 0) -> StoredRow:
    return StoredRow(doc_id, version, content_hash(text), T0 + timedelta(minutes=minutes))


def test_collect_source_keeps_first_duplicate_rejected_ids_and_counts_idless_records() -> None:
    items = [
        _doc("a", "second", "f.jsonl:9"), _doc("a", "first", "f.jsonl:2"), _doc("b", "bee"),
        DeadLetter("validate", "EmptyText", "empty", False, doc_id="c", source="f.jsonl:4"),
        DeadLetter("validate", "ParseError", "not JSON", False, source="f.jsonl:5"),
    ]
    src = collect_source(items)
    assert src.current == {"a": content_hash("first"), "b": content_hash("bee")}
    assert src.rejected_ids == {"c"} and src.unidentified == 1 and src.unidentified_at == ("f.jsonl:5",)


def test_left_source_and_moved_rows_are_stale_with_their_reason() -> None:
    src = SourceDocs({"keep": content_hash("k"), "moved": content_hash("new")})
    rows = [_row("keep", "local-a", "k"), _row("gone", "local-a", "g"), _row("gone", "api-a", "g"),
            _row("moved", "local-a", "old"), _row("moved", "api-a", "new", 5)]
    plan = plan_prune(src, rows, live=LIVE, retired=set())
    assert plan.ids("local-a", PruneReason.LEFT_SOURCE) == {"gone"}
    assert plan.ids("api-a", PruneReason.LEFT_SOURCE) == {"gone"}
    assert plan.ids("local-a", PruneReason.MOVED) == {"moved"}
    assert plan.ids("api-a") == {"gone"} and plan.rows_scanned == 5
    assert plan.counts() == {("local-a", PruneReason.LEFT_SOURCE): 1, ("api-a", PruneReason.LEFT_SOURCE): 1,
                             ("local-a", PruneReason.MOVED): 1}
    assert plan.by_version() == {"api-a": ["gone"], "local-a": ["gone", "moved"]}


def test_a_changed_document_nobody_embedded_yet_keeps_its_old_vector() -> None:
    src = SourceDocs({"d": content_hash("new")})
    plan = plan_prune(src, [_row("d", "local-a", "old"), _row("d", "api-a", "older")], live=LIVE, retired=())
    assert plan.stale == ()


def test_a_live_row_moves_only_to_another_live_version() -> None:
    src = SourceDocs({"d": content_hash("new")})
    rows = [_row("d", "local-a", "old"), _row("d", "shadow-b", "new", 5)]
    assert plan_prune(src, rows, live=LIVE, retired=()).stale == ()  # a shadow is not served
    rows = [_row("d", "shadow-b", "old"), _row("d", "local-a", "new", 5)]
    assert plan_prune(src, rows, live=LIVE, retired=()).ids("shadow-b", PruneReason.MOVED) == {"d"}


def test_a_retired_holder_does_not_make_a_row_moved() -> None:
    src = SourceDocs({"d": content_hash("new")})
    rows = [_row("d", "cand", "old"), _row("d", "gone-v", "new", 5)]
    assert plan_prune(src, rows, live=LIVE, retired={"gone-v"}).stale == ()


def test_same_text_in_two_versions_is_never_stale() -> None:
    src = SourceDocs({"d": content_hash("t")})
    rows = [_row("d", "local-a", "t"), _row("d", "api-a", "t", 5)]
    assert plan_prune(src, rows, live=LIVE, retired=()).stale == ()


def test_a_rejected_record_with_its_id_known_keeps_its_vectors() -> None:
    src = SourceDocs({}, rejected_ids=frozenset({"d"}))
    assert plan_prune(src, [_row("d", "local-a", "t")], live=LIVE, retired=()).stale == ()


def test_idless_records_withhold_left_source_unless_accepted() -> None:
    src = SourceDocs({"d": content_hash("new")}, unidentified=2, unidentified_at=("f:3", "f:4"))
    rows = [_row("gone", "local-a", "g"), _row("d", "local-a", "old"), _row("d", "api-a", "new", 5)]
    plan = plan_prune(src, rows, live=LIVE, retired=())
    assert plan.ids("local-a") == {"d"}  # moved still applies: the document is in the source
    assert plan.withheld_left_source == 1 and plan.unidentified == 2
    accepted = plan_prune(src, rows, live=LIVE, retired=(), despite_unidentified=True)
    assert accepted.ids("local-a", PruneReason.LEFT_SOURCE) == {"gone"} and accepted.withheld_left_source == 0


def test_retired_rows_go_only_when_asked() -> None:
    src = SourceDocs({"d": content_hash("t")})
    rows = [_row("d", "old-v", "t"), _row("d", "local-a", "t")]
    kept = plan_prune(src, rows, live=LIVE, retired={"old-v"})
    assert kept.stale == () and kept.retired_kept == 1
    gone = plan_prune(src, rows, live=LIVE, retired={"old-v"}, include_retired=True)
    assert gone.counts() == {("old-v", PruneReason.RETIRED): 1}


def test_superseded_drops_the_older_vector_of_changed_text_only() -> None:
    stamps = {
        "local-a": {"moved": RowStamp("h-old", T0), "same": RowStamp("h", T0),
                    "newer": RowStamp("h2", T0 + timedelta(1))},
        "api-a": {"moved": RowStamp("h-new", T0 + timedelta(1)), "same": RowStamp("h", T0 + timedelta(1)),
                  "newer": RowStamp("h1", T0), "untimed": RowStamp("x", None)},
    }
    stamps["local-a"]["untimed"] = RowStamp("y", T0)
    assert superseded(stamps) == {("local-a", "moved"), ("api-a", "newer")}


# -- properties ----------------------------------------------------------------------------

VERSIONS = ("local-a", "api-a", "shadow-b", "old-v")
_ids = st.sampled_from([f"d{i}" for i in range(6)])
_texts = st.sampled_from(["t0", "t1", "t2"])


@st.composite
def _cases(draw: st.DrawFn) -> tuple[SourceDocs, list[StoredRow], bool, bool]:
    current = draw(st.dictionaries(_ids, _texts.map(content_hash), max_size=6))
    rejected = draw(st.frozensets(_ids, max_size=3)) - set(current)
    src = SourceDocs(current, rejected, draw(st.integers(0, 2)))
    cells = draw(st.dictionaries(st.tuples(_ids, st.sampled_from(VERSIONS)),
                                 st.tuples(_texts, st.integers(0, 100)), max_size=24))
    rows = [StoredRow(i, v, content_hash(t), T0 + timedelta(minutes=m)) for (i, v), (t, m) in cells.items()]
    return src, rows, draw(st.booleans()), draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(_cases())
def test_nothing_current_is_ever_pruned(case: tuple[SourceDocs, list[StoredRow], bool, bool]) -> None:
    src, rows, include_retired, despite = case
    plan = plan_prune(src, rows, live=LIVE, retired={"old-v"}, include_retired=include_retired,
                      despite_unidentified=despite)
    gone = {(s.row.doc_id, s.row.version) for s in plan.stale}
    for s in plan.stale:
        if s.reason is not PruneReason.RETIRED:
            assert src.current.get(s.row.doc_id) != s.row.content_hash  # never the current text
            assert s.row.doc_id not in src.rejected_ids  # never a record rejected with its id
        if s.reason is PruneReason.LEFT_SOURCE:
            assert despite or src.unidentified == 0
    # a document of the source served by a live version stays served by one
    for doc_id in set(src.current) | src.rejected_ids:
        live_before = {r.version for r in rows if r.doc_id == doc_id and r.version in LIVE}
        live_after = {v for v in live_before if (doc_id, v) not in gone}
        assert not live_before or live_after
    # every row is either stale with one reason or kept
    assert len(gone) == len(plan.stale) <= plan.rows_scanned == len(rows)
