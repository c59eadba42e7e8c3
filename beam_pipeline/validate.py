"""ValidateDocuments: raw records -> Documents, with a dead-letter output.

Each record is checked by :func:`tiering.validation.validate_record`; then documents are
grouped by id so a duplicate id is caught across all files and workers (the first in source
order is kept, the others are dead-lettered with the location of the one kept).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam import pvalue

from beam_pipeline.tagged import TaggedOutputsTransform
from tiering.documents import DeadLetter, Document
from tiering.validation import RawRecord, ValidationRules, resolve_duplicates, validate_record

__all__ = ["ValidateDocuments", "DEAD_LETTERS"]

DEAD_LETTERS = "dead_letters"
_log = logging.getLogger(__name__)


@beam.typehints.with_input_types(RawRecord)
@beam.typehints.with_output_types(tuple[str, Document], dead_letters=DeadLetter)
class _ValidateFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, rules: ValidationRules) -> None:
        self._rules = rules

    def process(self, raw: RawRecord) -> Iterator[object]:
        try:
            result: Document | DeadLetter = validate_record(raw, self._rules)
        except Exception as exc:  # noqa: BLE001 - a record is data: it never stops the run
            result = _crashed(raw, exc)
        if isinstance(result, DeadLetter):
            beam.metrics.Metrics.counter("tierembed", "dead_letters.validate").inc()
            yield pvalue.TaggedOutput(DEAD_LETTERS, result)
        else:
            yield (result.id, result)


def _crashed(raw: RawRecord, exc: Exception) -> DeadLetter:
    """A record that made validation itself fail: a bug of ours, kept as a dead letter."""
    _log.error("validation failed on %s: %s: %s", raw.location, type(exc).__name__, exc)
    return DeadLetter(
        stage="validate", error_type="ValidationFailed", retryable=False, source=raw.location,
        message=f"{raw.location}: validating this record failed unexpectedly ({type(exc).__name__}: "
        f"{exc}); this is a bug in tierembed: please report it with the record",
        payload=raw.payload if raw.raw is None else "",
    )


@beam.typehints.with_input_types(tuple[str, Iterable[Document]])
@beam.typehints.with_output_types(Document, dead_letters=DeadLetter)
class _ResolveDuplicatesFn(beam.DoFn):  # type: ignore[misc]
    def process(self, element: tuple[str, Iterable[Document]]) -> Iterator[object]:
        doc_id, docs = element
        keep, letters = resolve_duplicates(doc_id, list(docs))
        for letter in letters:
            beam.metrics.Metrics.counter("tierembed", "dead_letters.validate").inc()
            yield pvalue.TaggedOutput(DEAD_LETTERS, letter)
        beam.metrics.Metrics.counter("tierembed", "documents_valid").inc()
        yield keep


class ValidateDocuments(TaggedOutputsTransform):
    """Outputs: ``documents`` (unique, valid) and ``dead_letters``."""

    def __init__(self, rules: ValidationRules) -> None:
        super().__init__()
        self.rules = rules

    def expand(self, records: beam.PCollection[RawRecord]) -> dict[str, beam.PCollection]:
        checked = records | "Check" >> beam.ParDo(_ValidateFn(self.rules)).with_outputs(
            DEAD_LETTERS, main="keyed"
        )
        unique = (
            checked.keyed
            | "GroupById" >> beam.GroupByKey()
            | "ResolveDuplicates" >> beam.ParDo(_ResolveDuplicatesFn()).with_outputs(
                DEAD_LETTERS, main="documents"
            )
        )
        letters = (checked[DEAD_LETTERS], unique[DEAD_LETTERS]) | "FlattenDeadLetters" >> beam.Flatten()
        return {"documents": unique.documents, DEAD_LETTERS: letters}
