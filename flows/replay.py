"""Turning a dead-letter set back into input records for ``tierembed replay``.

Validation dead letters carry the raw record as read (in the input's own field names);
letters from later stages carry the validated document as ``{"id", "text", "metadata"}``,
which is mapped back to the configured ``input.*_field`` names so the replayed file
validates like the original input did.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tiering.errors import InputNotFoundError
from tiering.settings import InputSettings

__all__ = ["ReplaySelection", "dead_letter_files", "select_for_replay"]


@dataclass(frozen=True, slots=True)
class ReplaySelection:
    records: tuple[str, ...]
    skipped_terminal: int
    skipped_unreadable: int


def dead_letter_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    files = [f for f in files if f.is_file()]
    if not files:
        raise InputNotFoundError(f"no dead-letter files at {path}; pass a run's dead-letter folder "
                                 "(.tierembed/dead_letters/<run id>) or one of its .jsonl files")
    return files


def _as_input(letter: dict[str, object], fields: InputSettings) -> str | None:
    payload = letter.get("payload")
    if not isinstance(payload, str):
        return None
    if letter.get("stage") == "validate":
        return payload  # the raw record, already in the input's field names
    try:
        doc = json.loads(payload)
    except json.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    record = {fields.id_field: doc.get("id"), fields.text_field: doc.get("text"),
              fields.metadata_field: doc.get("metadata", {})}
    return json.dumps(record, ensure_ascii=False)


def select_for_replay(
    lines: Iterable[str], fields: InputSettings, *, only_retryable: bool = True
) -> ReplaySelection:
    records: list[str] = []
    terminal = unreadable = 0
    for line in lines:
        if not line.strip():
            continue
        letter = json.loads(line)
        if only_retryable and not letter.get("retryable"):
            terminal += 1
            continue
        record = _as_input(letter, fields)
        if record is None:
            unreadable += 1
        else:
            records.append(record)
    return ReplaySelection(tuple(records), terminal, unreadable)
