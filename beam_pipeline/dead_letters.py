"""WriteDeadLetters: every rejected record of a run, as one JSONL set under the run's folder.

Each line is a ``DeadLetter`` (stage, error type, message, retryable, document id, source
location and the raw payload), so the set is both a report and the input of a replay.
"""

from __future__ import annotations

import apache_beam as beam

from tiering.documents import DeadLetter

__all__ = ["WriteDeadLetters", "dead_letter_prefix"]


def dead_letter_prefix(directory: str, run_id: str) -> str:
    return f"{directory.rstrip('/')}/{run_id}/dead-letters"


def _count(letter: DeadLetter) -> DeadLetter:
    beam.metrics.Metrics.counter("tierembed", "dead_letters_written").inc()
    return letter


class WriteDeadLetters(beam.PTransform):  # type: ignore[misc]
    def __init__(self, directory: str, run_id: str) -> None:
        super().__init__()
        self.prefix = dead_letter_prefix(directory, run_id)

    def expand(self, letters: beam.PCollection[DeadLetter]) -> beam.PCollection[str]:
        return (
            letters
            | "Count" >> beam.Map(_count)
            | "ToJson" >> beam.Map(DeadLetter.to_json)
            | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl")
        )
