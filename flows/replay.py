"""Turning a dead-letter set back into input records for ``tierembed replay``.

Validation dead letters carry the raw record as read (in the input's own field names);
letters from later stages carry the validated document as ``{"id", "text", "metadata"}``,
which is mapped back to the configured ``input.*_field`` names so the replayed file
validates like the original input did.

``tierembed replay`` writes the chosen records as a replay set (``*.replay.jsonl``: one
``{"source": original location, "record": ...}`` per line, read by
``beam_pipeline.read``), so replayed documents keep their original ``source`` instead of
naming a temporary file. A dead-letter file cut short by a killed run (a torn last line)
and letters whose payload is not text (``payload_encoding: base64``) are counted as
unreadable, never an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tiering.errors import InputNotFoundError
from tiering.settings import InputSettings

__all__ = ["ReplaySelection", "dead_letter_files", "select_for_replay", "replay_set_lines"]


@dataclass(frozen=True, slots=True)
class ReplaySelection:
    records: tuple[str, ...]  # input records, as JSONL lines
    skipped_terminal: int
    skipped_unreadable: int
    sources: tuple[str, ...] = ()  # each record's original location (file:line), in order


def replay_set_lines(selection: ReplaySelection) -> list[str]:
    """The lines of a replay set (``*.replay.jsonl``) for ``selection``."""
    lines = []
    for record, source in zip(selection.records, selection.sources, strict=True):
        try:
            value = json.loads(record)
        except (ValueError, RecursionError):
            value = None
        body = {"record": value} if isinstance(value, dict) else {"raw": record}
        lines.append(json.dumps({"source": source, **body}, ensure_ascii=False))
    return lines


def dead_letter_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    files = [f for f in files if f.is_file()]
    if not files:
        raise InputNotFoundError(f"no dead-letter files at {path}; pass a run's dead-letter folder "
                                 "(.tierembed/dead_letters/<run id>) or one of its .jsonl files")
    return files


def _as_input(letter: dict[str, object], fields: InputSettings) -> str | None:
    payload = letter.get("payload")
    if not isinstance(payload, str) or letter.get("payload_encoding", "utf-8") != "utf-8":
        return None
    if letter.get("stage") == "validate":
        return payload  # the raw record, already in the input's field names
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
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
    sources: list[str] = []
    terminal = unreadable = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            letter = json.loads(line)
        except (ValueError, RecursionError):
            unreadable += 1  # e.g. the torn last line of a killed run's file
            continue
        if not isinstance(letter, dict):
            unreadable += 1
            continue
        if only_retryable and not letter.get("retryable"):
            terminal += 1
            continue
        record = _as_input(letter, fields)
        if record is None:
            unreadable += 1
        else:
            records.append(record)
            sources.append(str(letter.get("source") or ""))
    return ReplaySelection(tuple(records), terminal, unreadable, tuple(sources))
