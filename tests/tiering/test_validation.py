from __future__ import annotations

import json

import pytest

from tiering.documents import DeadLetter, Document
from tiering.validation import RawRecord, ValidationRules, resolve_duplicates, validate_record

RULES = ValidationRules(max_text_chars=1000)


def raw(fields: dict[str, object] | None = None, *, error: str | None = None, pos: int = 1) -> RawRecord:
    payload = json.dumps(fields) if fields is not None else "{oops"
    return RawRecord("in.jsonl", pos, payload, tuple(fields.items()) if fields else None, error)


def test_valid_record_becomes_document_with_hash_and_folded_metadata() -> None:
    doc = validate_record(raw({"id": "a", "text": "hello", "metadata": {"x": 1}, "city": "Oslo"}), RULES)
    assert isinstance(doc, Document)
    assert doc.id == "a" and doc.source == "in.jsonl:1"
    assert doc.metadata_dict() == {"x": 1, "city": "Oslo"}
    assert len(doc.hash) == 64


@pytest.mark.parametrize(
    ("fields", "error_type", "fragment"),
    [
        ({"text": "t"}, "MissingId", "no 'id' field"),
        ({"id": "", "text": "t"}, "MissingId", "no 'id' field"),
        ({"id": 1.5, "text": "t"}, "InvalidId", "got number"),
        ({"id": True, "text": "t"}, "InvalidId", "got boolean"),
        ({"id": "a"}, "MissingText", "no 'text' field"),
        ({"id": "a", "text": 42}, "InvalidText", "must be a string, got number"),
        ({"id": "a", "text": ["x"]}, "InvalidText", "got array"),
        ({"id": "a", "text": "   "}, "EmptyText", "empty text"),
        ({"id": "a", "text": "x" * 1001}, "TextTooLong", "1,001 characters"),
        ({"id": "a", "text": "t", "metadata": "not json"}, "InvalidMetadata", "metadata"),
    ],
)
def test_bad_record_is_dead_lettered_with_reason(fields: dict[str, object], error_type: str,
                                                 fragment: str) -> None:
    letter = validate_record(raw(fields), RULES)
    assert isinstance(letter, DeadLetter)
    assert letter.error_type == error_type
    assert fragment in letter.message
    assert letter.message.startswith("in.jsonl:1: ")
    assert letter.stage == "validate" and not letter.retryable


def test_integer_id_is_accepted_as_string() -> None:
    doc = validate_record(raw({"id": 4242, "text": "t"}), RULES)
    assert isinstance(doc, Document) and doc.id == "4242"


def test_parse_error_is_dead_lettered_with_payload() -> None:
    letter = validate_record(raw(None, error="not valid JSON: Expecting value"), RULES)
    assert isinstance(letter, DeadLetter)
    assert letter.error_type == "ParseError" and letter.payload == "{oops"


def test_huge_payload_is_truncated_in_the_dead_letter() -> None:
    letter = validate_record(raw({"id": "big", "text": "y" * 200_000}), RULES)
    assert isinstance(letter, DeadLetter)
    assert len(letter.payload) < 70_000 and "truncated" in letter.payload


def test_duplicates_keep_first_in_source_order() -> None:
    a = validate_record(raw({"id": "d", "text": "first"}, pos=2), RULES)
    b = validate_record(raw({"id": "d", "text": "second"}, pos=9), RULES)
    assert isinstance(a, Document) and isinstance(b, Document)
    keep, letters = resolve_duplicates("d", [b, a])
    assert keep.text == "first"
    assert [x.error_type for x in letters] == ["DuplicateId"]
    assert "in.jsonl:2 was kept" in letters[0].message and "different text" in letters[0].message
