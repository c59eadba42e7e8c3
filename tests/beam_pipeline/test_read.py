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
from tiering.errors import InputNotFoundError
from tiering.validation import RawRecord


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
