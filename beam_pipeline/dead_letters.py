"""WriteDeadLetters: every rejected record of a run, as one JSONL set under the run's folder.

Each line is a ``DeadLetter`` (stage, error type, message, retryable, document id, source
location and the raw payload: text, or base64 when the record was not valid UTF-8), so the
set is both a report and the input of a replay.

Letters are written as they arrive, one file per bundle (``dead-letters-<random>.jsonl``),
each line flushed at once, so a run that is killed keeps every letter it had produced.
Beam's ``WriteToText`` is not used: it writes into a ``beam-temp-*`` folder that it renames
into place only when the whole pipeline finishes, so a killed run lost its letters and left
that folder behind. The cost: a runner that retries a failed bundle (Dataflow, Flink) may
leave the letters of the failed attempt too, so a letter can appear twice in the set;
replaying it twice is harmless (upserts by id, unchanged documents are skipped).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.sinks.bundles import in_global_window
from tiering.documents import DeadLetter

__all__ = ["WriteDeadLetters", "dead_letter_prefix"]


def dead_letter_prefix(directory: str, run_id: str) -> str:
    return f"{directory.rstrip('/')}/{run_id}/dead-letters"


@beam.typehints.with_input_types(DeadLetter)
@beam.typehints.with_output_types(str)
class _AppendLettersFn(beam.DoFn):  # type: ignore[misc]
    """Appends each letter to this bundle's file as it arrives; emits the file's path."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._file: Any = None
        self._path = ""

    def start_bundle(self) -> None:
        self._file, self._path = None, ""

    def process(self, letter: DeadLetter) -> Iterator[str]:
        if self._file is None:
            self._path = f"{self._prefix}-{uuid.uuid4().hex[:12]}.jsonl"
            self._file = FileSystems.create(self._path, mime_type="application/jsonl")
        self._file.write(letter.to_json().encode("utf-8") + b"\n")
        flush = getattr(self._file, "flush", None)
        if flush is not None:
            flush()  # durable as it comes: a killed run keeps what it wrote
        beam.metrics.Metrics.counter("tierembed", "dead_letters_written").inc()
        return iter(())

    def finish_bundle(self) -> Iterator[object]:
        if self._file is None:
            return
        self._file.close()
        yield in_global_window(self._path)
        self._file, self._path = None, ""

    def teardown(self) -> None:
        if self._file is not None:  # a bundle that failed: keep what was written
            self._file.close()
            self._file = None


class WriteDeadLetters(beam.PTransform):  # type: ignore[misc]
    """Writes the letters under ``<directory>/<run id>/``; outputs the files written."""

    def __init__(self, directory: str, run_id: str) -> None:
        super().__init__()
        self.prefix = dead_letter_prefix(directory, run_id)

    def expand(self, letters: beam.PCollection[DeadLetter]) -> beam.PCollection[str]:
        return letters | "Append" >> beam.ParDo(_AppendLettersFn(self.prefix))
