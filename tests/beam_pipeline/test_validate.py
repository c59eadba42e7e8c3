from __future__ import annotations

from pathlib import Path

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.read import ReadDocuments
from beam_pipeline.validate import DEAD_LETTERS, ValidateDocuments
from tests.conftest import write_jsonl
from tiering.validation import ValidationRules


def test_valid_documents_and_dead_letters_account_for_every_record(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [
        {"id": "a", "text": "one"}, {"id": "b", "text": "two"}, "{broken", {"id": "c"},
    ])
    write_jsonl(tmp_path / "b.jsonl", [{"id": "a", "text": "dup from b"}, {"id": "d", "text": 5}])
    with TestPipeline() as p:
        out = (p | ReadDocuments(str(tmp_path / "*.jsonl"))
               | ValidateDocuments(ValidationRules()))
        assert_that(out["documents"] | beam.Map(lambda d: (d.id, d.text)),
                    equal_to([("a", "one"), ("b", "two")]), label="docs")
        assert_that(out[DEAD_LETTERS] | beam.Map(lambda d: (d.error_type, d.doc_id)),
                    equal_to([("ParseError", None), ("MissingText", "c"), ("DuplicateId", "a"),
                              ("InvalidText", "d")]), label="dead")
