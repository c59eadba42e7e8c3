"""The files ``tierembed router`` reads and writes: documents, labelled documents, query
sets with relevance judgements, and derived gain labels.

Documents are JSONL or CSV, validated exactly as the pipeline validates them
(``tiering.validation``); bad records are collected and raised together as one
:class:`~tiering.classifier.TrainingDataError` naming the first few by file and line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tiering.classifier import LabeledExample, TrainingDataError
from tiering.documents import Document
from tiering.errors import InputNotFoundError
from tiering.gain_labels import GainLabel, Query, parse_target
from tiering.validation import RawRecord, ValidationRules, validate_record

__all__ = [
    "LABEL_FIELDS",
    "read_documents",
    "read_labelled",
    "read_queries",
    "find_document",
    "write_gain_labels",
]

LABEL_FIELDS = ("label", "target")
# Grades of the single-query judgement files in examples/data (search_judgments.json).
_GRADE_LISTS = {"relevant": 2.0, "partial": 1.0, "irrelevant": 0.0}


# ---------------------------------------------------------------------- raw records


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise InputNotFoundError(f"cannot tell the format of {path} from its extension; use .jsonl or .csv")


def _raw_records(path: Path) -> Iterator[RawRecord]:
    if not path.is_file():
        raise InputNotFoundError(f"{path} does not exist or is not a file")
    if _format_of(path) == "csv":
        yield from _csv_records(path)
    else:
        yield from _jsonl_records(path)


def _csv_records(path: Path) -> Iterator[RawRecord]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            fields = {k: v for k, v in row.items() if k is not None}
            yield RawRecord(str(path), reader.line_num, json.dumps(fields), fields=tuple(fields.items()))


def _jsonl_records(path: Path) -> Iterator[RawRecord]:
    with path.open(encoding="utf-8") as handle:
        for n, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RawRecord(str(path), n, line, parse_error=f"not valid JSON: {exc.msg}")
                continue
            fields = tuple(value.items()) if isinstance(value, dict) else None
            yield RawRecord(str(path), n, line, fields=fields)


def _problems(where: Path, messages: list[str]) -> TrainingDataError:
    shown = "\n  ".join(messages[:5])
    more = f"\n  ... and {len(messages) - 5} more" if len(messages) > 5 else ""
    return TrainingDataError(f"{len(messages)} bad records in {where}:\n  {shown}{more}", stage="train")


# ------------------------------------------------------------------------ documents


def _without_labels(raw: RawRecord) -> RawRecord:
    if raw.fields is None:
        return raw
    return RawRecord(raw.source, raw.position, raw.payload,
                     fields=tuple((k, v) for k, v in raw.fields if k not in LABEL_FIELDS))


def read_documents(path: Path, rules: ValidationRules) -> list[Document]:
    """Every record of ``path`` as a Document, validated like the pipeline does (label
    columns are dropped so they never leak into metadata); bad records raise."""
    docs: list[Document] = []
    problems: list[str] = []
    seen: set[str] = set()
    for raw in _raw_records(path):
        result = validate_record(_without_labels(raw), rules)
        if not isinstance(result, Document):
            problems.append(result.message)
        elif result.id in seen:
            problems.append(f"{result.source}: duplicate id {result.id!r}")
        else:
            seen.add(result.id)
            docs.append(result)
    if problems:
        raise _problems(path, problems)
    return docs


def read_labelled(path: Path, rules: ValidationRules, positive: str | None = None) -> list[LabeledExample]:
    """Labelled documents: each record needs ``label`` or ``target`` besides id and text."""
    targets: dict[str, float] = {}
    problems: list[str] = []
    for raw in _raw_records(path):
        fields = dict(raw.fields or ())
        doc_id = str(fields.get(rules.id_field, "")).strip()
        value = fields.get("target") if fields.get("target") not in (None, "") else fields.get("label")
        try:
            targets[doc_id] = parse_target(value, positive)
        except ValueError as exc:
            problems.append(f"{raw.location}: document {doc_id!r}: {exc}")
    if problems:
        raise _problems(path, problems)
    return [LabeledExample(d, targets[d.id]) for d in read_documents(path, rules)]


def find_document(source: Path, doc_id: str, rules: ValidationRules) -> Document:
    """The document ``doc_id`` of ``source``; raises InputNotFoundError when absent."""
    for doc in read_documents(source, rules):
        if doc.id == doc_id:
            return doc
    raise InputNotFoundError(f"no document with id {doc_id!r} in {source}")


# -------------------------------------------------------------------------- queries


def _judgements(entry: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    grades: dict[str, float] = {}
    for name, grade in _GRADE_LISTS.items():
        value = entry.get(name)
        if isinstance(value, dict):
            grades.update({str(k): float(v) for k, v in value.items()})
        elif isinstance(value, list):
            grades.update({str(k): grade for k in value})
    return tuple(sorted((k, g) for k, g in grades.items() if g > 0))


def _query_entries(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputNotFoundError(f"cannot read the query set {path}: {exc}") from exc
    entries = data.get("queries", [data]) if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TrainingDataError(f"{path}: expected {{'queries': [...]}} or a list of query objects",
                                stage="train")
    return entries


def read_queries(path: Path) -> list[Query]:
    """Queries with judgements from JSON: ``{"queries": [{"id", "text", "relevant"}]}``, a
    list of such objects, or one object with ``query`` (like examples' judgement files).
    ``relevant`` (and ``partial``) map document ids to grades, or list ids: grade 2 for
    ``relevant``, 1 for ``partial``. Grade-0 and ``irrelevant`` ids are ignored."""
    queries = []
    for n, e in enumerate(_query_entries(path), start=1):
        text = e.get("text", e.get("query"))
        if not isinstance(text, str) or not text.strip():
            raise TrainingDataError(f"{path}: query #{n} has no 'text'", stage="train")
        queries.append(Query(str(e.get("id", f"q{n}")), text, _judgements(e)))
    return queries


# ---------------------------------------------------------------------- gain labels


def write_gain_labels(path: Path, labels: Sequence[GainLabel]) -> None:
    """``labels`` as JSONL (``--labels-out``): id, target, mean_gain, queries, mean ranks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for x in labels:
            handle.write(json.dumps({"id": x.doc_id, "target": round(x.target, 6),
                                     "mean_gain": round(x.mean_gain, 6), "queries": x.queries,
                                     "mean_rank_local": x.mean_rank_local,
                                     "mean_rank_api": x.mean_rank_api}) + "\n")
