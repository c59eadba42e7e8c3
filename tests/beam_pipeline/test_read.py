from __future__ import annotations

import csv
import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.read import ReadDocuments, match_sources
from beam_pipeline.validate import DEAD_LETTERS, ValidateDocuments
from tiering.errors import InputNotFoundError
from tiering.validation import RawRecord, ValidationRules


def _summary(r: RawRecord) -> tuple[str, int, str | None, str | None]:
    fields = dict(r.fields) if r.fields else {}
    return (Path(r.source).name, r.position, fields.get("id"), r.parse_error and r.parse_error[:14])  # type: ignore[return-value]


def test_reads_jsonl_parquet_and_csv_with_locations(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": "j1", "text": "x"}\n\nnot json\n[1, 2]\n')
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["y", "z"]}), tmp_path / "b.parquet")
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["id", "text"], ["c1", "hello, world"]])
    with TestPipeline() as p:
        out = p | ReadDocuments(str(tmp_path)) | beam.Map(_summary)
        assert_that(out, equal_to([
            ("a.jsonl", 1, "j1", None),
            ("a.jsonl", 3, None, "not valid JSON"),
            ("a.jsonl", 4, None, "expected a JSO"),
            ("b.parquet", 1, "p1", None),
            ("b.parquet", 2, "p2", None),
            ("c.csv", 2, "c1", None),
        ]))


def test_invalid_utf8_line_becomes_parse_error(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_bytes(b'{"id": "ok", "text": "fine"}\n\xff\xfe{"id": 1}\n')
    with TestPipeline() as p:
        out = p | ReadDocuments(str(tmp_path / "bad.jsonl")) | beam.Map(_summary)
        assert_that(out, equal_to([("bad.jsonl", 1, "ok", None), ("bad.jsonl", 2, None, "not valid UTF-")]))


def test_missing_path_fails_at_construction_with_clear_message(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="no input files match"):
        ReadDocuments(str(tmp_path / "missing.jsonl"))


def test_directory_without_known_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputNotFoundError, match="directory"):
        match_sources(str(tmp_path))


def test_glob_matches_only_known_formats(tmp_path: Path) -> None:
    for name in ("a.jsonl", "b.parquet", "c.json", "d.md"):
        (tmp_path / name).write_text("")
    assert [Path(p).name for p in match_sources(str(tmp_path / "*"))] == ["a.jsonl", "b.parquet"]


def test_empty_file_yields_no_records(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    with TestPipeline() as p:
        out = p | ReadDocuments(str(tmp_path / "empty.jsonl"))
        assert_that(out, equal_to([]))


def test_record_payload_is_the_raw_line(tmp_path: Path) -> None:
    line = json.dumps({"id": "x", "text": "t", "extra": [1, 2]})
    (tmp_path / "x.jsonl").write_text(line + "\n")
    with TestPipeline() as p:
        out = p | ReadDocuments(str(tmp_path / "x.jsonl")) | beam.Map(lambda r: r.payload)
        assert_that(out, equal_to([line]))


def test_csv_field_over_the_default_csv_limit_is_read(tmp_path: Path) -> None:
    big = "x" * 200_000  # the csv module's default field limit is 131,072 chars
    with open(tmp_path / "big.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "text"], ["b1", big], ["b2", "short"]])
    with TestPipeline() as p:
        out = p | ReadDocuments(str(tmp_path / "big.csv")) | beam.Map(
            lambda r: (dict(r.fields or ()).get("id"), len(str(dict(r.fields or ()).get("text"))),
                       r.parse_error))
        assert_that(out, equal_to([("b1", 200_000, None), ("b2", 5, None)]))


def test_csv_row_with_invalid_utf8_is_dead_lettered_and_the_rest_of_the_file_reads(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_bytes(b'id,text\nc1,fine\nc2,bad \xff byte\nc3,"also, fine"\n')
    with TestPipeline() as p:
        out = p | ReadDocuments(str(tmp_path / "bad.csv")) | beam.Map(_summary)
        assert_that(out, equal_to([
            ("bad.csv", 2, "c1", None),
            ("bad.csv", 3, None, "not valid UTF-"),
            ("bad.csv", 4, "c3", None),
        ]))


def test_corrupt_parquet_file_becomes_one_parse_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": "j1", "text": "x"}\n')
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not really parquet")
    with TestPipeline() as p:
        out = p | ReadDocuments(str(tmp_path)) | beam.Map(
            lambda r: (Path(r.source).name, r.position, r.parse_error and "broken.parquet" in r.parse_error))
        assert_that(out, equal_to([("a.jsonl", 1, None), ("broken.parquet", 1, True)]))


def test_unreadable_file_is_counted_as_read_and_dead_lettered(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "ok.jsonl").write_text('{"id": "j1", "text": "x"}\n{"id": "j2", "text": "y"}\n')
    with TestPipeline() as p:
        raw = p | ReadDocuments(str(tmp_path))
        out = raw | ValidateDocuments(ValidationRules())
        assert_that(raw | "CountRead" >> beam.combiners.Count.Globally(), equal_to([3]), label="read")
        assert_that(out["documents"] | beam.Map(lambda d: d.id), equal_to(["j1", "j2"]), label="valid")
        assert_that(out[DEAD_LETTERS] | beam.Map(lambda d: (d.error_type, "broken.parquet" in d.message)),
                    equal_to([("ParseError", True)]), label="dead")
