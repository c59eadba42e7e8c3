"""Validation of raw input records into :class:`~tiering.documents.Document`.

Pure logic used by the ``ValidateDocuments`` stage: each raw record becomes either a
``Document`` or a ``DeadLetter`` naming the record, the rule it broke and the fix. Duplicate
ids are resolved across the whole input by :func:`resolve_duplicates` (the first occurrence in
source order wins; later ones are dead-lettered).

Hostile input is data: a record whose id, text or metadata is not valid Unicode (a lone
surrogate from a ``\\ud800`` escape, which JSON allows but UTF-8 cannot encode), whose
metadata string nests deeper than :data:`MAX_NESTING`, or that breaks any other rule, is a
dead letter with its reason; :func:`validate_record` never raises for any record.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass

from tiering.documents import DeadLetter, Document, content_hash

__all__ = [
    "RawRecord",
    "ValidationRules",
    "validate_record",
    "resolve_duplicates",
    "nesting_depth",
    "unencodable_at",
    "MAX_NESTING",
    "STAGE",
]

STAGE = "validate"
_PAYLOAD_PREVIEW_CHARS = 65_536
# Deeper JSON is refused: Python's JSON and pickle recurse per level (and Beam pickles
# records between stages), and no document format needs more. serde_json's default
# recursion limit is 128 too.
MAX_NESTING = 128


def unencodable_at(text: str) -> int | None:
    """Index of the first character UTF-8 cannot encode (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def nesting_depth(value: object, limit: int = MAX_NESTING) -> int:
    """Depth of nested lists/dicts/tuples in ``value`` (a scalar is 0), counted without
    recursion and stopping once past ``limit``."""
    depth = 0
    level = [value]
    while level and depth <= limit:
        nxt: list[object] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(item.values())
            elif isinstance(item, list | tuple):
                nxt.extend(item)
        if not nxt and not any(isinstance(i, dict | list | tuple) for i in level):
            break
        depth += 1
        level = nxt
    return depth


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as read: where it came from and either its parsed fields or a parse error.

    ``payload`` is the raw text of the record (a JSONL line, or the JSON of a Parquet/CSV
    row) so a dead letter can be replayed as-is.
    """

    source: str
    position: int
    payload: str
    fields: tuple[tuple[str, object], ...] | None = None
    parse_error: str | None = None
    raw: bytes | None = None  # the record's bytes when they are not valid UTF-8

    @property
    def location(self) -> str:
        return f"{self.source}:{self.position}"


@dataclass(frozen=True, slots=True)
class ValidationRules:
    id_field: str = "id"
    text_field: str = "text"
    metadata_field: str = "metadata"
    max_text_chars: int = 2_000_000


def _dead(raw: RawRecord, error_type: str, message: str, doc_id: str | None = None) -> DeadLetter:
    extra: tuple[tuple[str, str], ...] = ()
    if raw.raw is not None:
        # Not text: keep the bytes exactly (base64), never a Python repr.
        kept = raw.raw[:_PAYLOAD_PREVIEW_CHARS]
        payload, encoding = base64.b64encode(kept).decode("ascii"), "base64"
        if len(kept) < len(raw.raw):
            extra = (("payload_truncated", f"first {len(kept)} of {len(raw.raw)} bytes"),)
    else:
        payload, encoding = raw.payload, "utf-8"
        if len(payload) > _PAYLOAD_PREVIEW_CHARS:
            # Keep dead-letter files readable: a 10 MB document is referenced, not copied.
            payload = payload[:_PAYLOAD_PREVIEW_CHARS] + f"... [truncated, {len(raw.payload)} chars]"
    return DeadLetter(
        stage=STAGE,
        error_type=error_type,
        message=f"{raw.location}: {message}",
        retryable=False,
        doc_id=None if doc_id is None else _printable(doc_id),
        source=raw.location,
        payload=payload,
        extra=extra,
        payload_encoding=encoding,
    )


def _printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode written as a backslash escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _not_unicode(what: str, text: str, at: int) -> str:
    return (f"{what} is not valid Unicode: a lone surrogate U+{ord(text[at]):04X} at character "
            f"{at} (a \\u{ord(text[at]):04x} escape without its pair); fix the record's encoding")


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _coerce_id(value: object) -> str | None:
    if isinstance(value, str):
        stripped = value.strip()
        return stripped or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _metadata_json(fields: dict[str, object], rules: ValidationRules) -> str | None:
    """Canonical JSON of user metadata: the metadata field plus any unknown fields; None
    when the metadata field is not an object (or a JSON object string of sane depth)."""
    meta_value = fields.get(rules.metadata_field)
    if isinstance(meta_value, str):
        try:
            meta_value = json.loads(meta_value) if meta_value.strip() else {}
        except (ValueError, RecursionError):  # bad JSON, too many digits, far too deep
            return None
    if meta_value is None:
        meta_value = {}
    if not isinstance(meta_value, dict):
        return None
    known = {rules.id_field, rules.text_field, rules.metadata_field}
    extra = {k: v for k, v in fields.items() if k not in known}
    merged = {**extra, **meta_value}
    if nesting_depth(merged) > MAX_NESTING:
        return None
    return json.dumps(merged, sort_keys=True, ensure_ascii=False, default=str)


def validate_record(raw: RawRecord, rules: ValidationRules) -> Document | DeadLetter:
    """Turn a raw record into a Document, or a DeadLetter saying why not."""
    if raw.parse_error is not None:
        return _dead(raw, "ParseError", raw.parse_error)
    if raw.fields is None:
        return _dead(raw, "NotAnObject", "record is not an object with named fields")
    fields = dict(raw.fields)
    id_value = fields.get(rules.id_field)
    doc_id = _coerce_id(id_value)
    if doc_id is None:
        if id_value is None or isinstance(id_value, str):
            return _dead(raw, "MissingId", f"record has no '{rules.id_field}' field (or it is empty)")
        return _dead(
            raw, "InvalidId", f"'{rules.id_field}' must be a string or integer, got {_type_name(id_value)}"
        )
    bad_at = unencodable_at(doc_id)
    if bad_at is not None:
        return _dead(raw, "InvalidId", _not_unicode(f"'{rules.id_field}'", doc_id, bad_at), doc_id)
    if rules.text_field not in fields or fields[rules.text_field] is None:
        return _dead(raw, "MissingText", f"document {doc_id!r} has no '{rules.text_field}' field", doc_id)
    text = fields[rules.text_field]
    if not isinstance(text, str):
        return _dead(
            raw,
            "InvalidText",
            f"document {doc_id!r}: '{rules.text_field}' must be a string, got {_type_name(text)}",
            doc_id,
        )
    if not text.strip():
        return _dead(raw, "EmptyText", f"document {doc_id!r} has empty text", doc_id)
    bad_at = unencodable_at(text)
    if bad_at is not None:
        return _dead(raw, "InvalidText", f"document {doc_id!r}: "
                     + _not_unicode(f"'{rules.text_field}'", text, bad_at), doc_id)
    if len(text) > rules.max_text_chars:
        return _dead(
            raw,
            "TextTooLong",
            f"document {doc_id!r} has {len(text):,} characters, over input.max_text_chars="
            f"{rules.max_text_chars:,}; split it upstream or raise input.max_text_chars",
            doc_id,
        )
    metadata = _metadata_json(fields, rules)
    if metadata is None:
        return _dead(
            raw,
            "InvalidMetadata",
            f"document {doc_id!r}: '{rules.metadata_field}' must be an object or a JSON object string "
            f"(nested at most {MAX_NESTING} levels)",
            doc_id,
        )
    bad_at = unencodable_at(metadata)
    if bad_at is not None:
        return _dead(raw, "InvalidMetadata", f"document {doc_id!r}: "
                     + _not_unicode("its metadata", metadata, bad_at), doc_id)
    return Document(
        id=doc_id, text=text, source=raw.location, metadata_json=metadata, hash=content_hash(text)
    )


def _source_order(doc: Document) -> tuple[str, int]:
    path, _, pos = doc.source.rpartition(":")
    return (path, int(pos)) if pos.isdigit() else (doc.source, 0)


def resolve_duplicates(doc_id: str, docs: Sequence[Document]) -> tuple[Document, list[DeadLetter]]:
    """Keep the first document with ``doc_id`` in source order; dead-letter the others."""
    ordered = sorted(docs, key=_source_order)
    keep, rest = ordered[0], ordered[1:]
    letters = [
        DeadLetter(
            stage=STAGE,
            error_type="DuplicateId",
            message=f"{d.source}: duplicate id {doc_id!r}; the record at {keep.source} was kept"
            + (" (same text)" if d.hash == keep.hash else " (different text)"),
            retryable=False,
            doc_id=doc_id,
            source=d.source,
            payload=json.dumps({"id": d.id, "text": d.text[:_PAYLOAD_PREVIEW_CHARS],
                                "metadata": json.loads(d.metadata_json)}, ensure_ascii=False),
        )
        for d in rest
    ]
    return keep, letters
