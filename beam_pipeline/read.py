"""ReadDocuments: JSONL, Parquet and CSV from local paths or any Beam filesystem.

The source (a path, a directory or a glob, on any filesystem Beam knows: gs://, s3://, ...)
is matched when the pipeline is built, so a missing file or an empty glob fails at once with
a clear message instead of deep inside a worker. Each file is read by one worker; every
record leaves as a ``RawRecord`` holding its ``path:line`` (or row) and its raw payload, so a
record that cannot be parsed becomes a dead letter in the next stage, never an exception.
A file that cannot be read at all (a corrupt Parquet footer, a broken CSV, an I/O error)
becomes ONE such record naming the file and the error, after whatever it yielded before the
failure, so ``records_read`` still equals valid documents plus dead letters.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from tiering.errors import InputNotFoundError
from tiering.validation import RawRecord

__all__ = ["ReadDocuments", "match_sources", "detect_format"]

_log = logging.getLogger(__name__)
# The csv module rejects fields over 131,072 chars by default; long documents are normal here
# (validation enforces input.max_text_chars). The limit is a C long: 2**31 - 1 fits everywhere.
_CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)
_FORMATS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv",
}


def detect_format(path: str, configured: str = "auto") -> str:
    """The reader for ``path``: the configured format, or one picked by extension."""
    if configured != "auto":
        return configured
    name = path.lower()
    for suffix in (".gz", ".bz2", ".zst", ".deflate"):
        name = name.removesuffix(suffix)
    for ext, fmt in _FORMATS.items():
        if name.endswith(ext):
            return fmt
    raise InputNotFoundError(
        f"cannot tell the format of {path!r} from its extension; use .jsonl, .parquet or .csv, "
        "or set input.format"
    )


def match_sources(source: str, configured_format: str = "auto") -> list[str]:
    """Expand ``source`` to the files it names; raise InputNotFoundError if none."""
    pattern = source
    local = Path(source).expanduser()
    if "://" not in source and local.is_dir():
        pattern = str(local / "*")
    results = FileSystems.match([pattern])[0].metadata_list
    paths = sorted(m.path for m in results if not m.path.endswith("/"))
    if configured_format == "auto":
        paths = [p for p in paths if _known(p)]
    if not paths:
        what = "directory" if pattern != source else "path or glob"
        raise InputNotFoundError(
            f"no input files match {source!r} ({what}); expected .jsonl, .parquet or .csv "
            "files. Check the path, or quote the glob so the shell does not expand it"
        )
    return paths


def _known(path: str) -> bool:
    try:
        detect_format(path)
    except InputNotFoundError:
        return False
    return True


def _jsonl_records(path: str, handle: BinaryIO) -> Iterator[RawRecord]:
    for line_no, raw_line in enumerate(handle, start=1):
        try:
            line = raw_line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            yield RawRecord(path, line_no, repr(raw_line[:2000]), parse_error=f"not valid UTF-8: {exc}")
            continue
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawRecord(path, line_no, line,
                            parse_error=f"not valid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(value, dict):
            yield RawRecord(path, line_no, line,
                            parse_error=f"expected a JSON object, got a JSON {type(value).__name__}")
            continue
        yield RawRecord(path, line_no, line, fields=tuple(value.items()))


def _parquet_records(path: str, handle: BinaryIO) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    row_no = 0
    for batch in pq.ParquetFile(handle).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            row_no += 1
            yield RawRecord(path, row_no, json.dumps(row, default=str, ensure_ascii=False),
                            fields=tuple(row.items()))


def _csv_records(path: str, handle: BinaryIO) -> Iterator[RawRecord]:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    # surrogateescape keeps undecodable bytes in the text, so the bad row is found and
    # dead-lettered by itself while the rest of the file still reads
    text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.DictReader(text)
    for row in reader:
        yield _csv_record(path, reader.line_num, row)


def _csv_record(path: str, line_no: int, row: dict[str | None, Any]) -> RawRecord:
    fields = {k: v for k, v in row.items() if k is not None}
    payload = json.dumps(fields, ensure_ascii=False)
    try:
        payload.encode("utf-8")
    except UnicodeEncodeError as exc:
        shown = payload.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        byte = ord(payload[exc.start]) - 0xDC00  # surrogateescape maps byte b to U+DC00 + b
        return RawRecord(path, line_no, shown[:2000],
                         parse_error=f"not valid UTF-8: byte 0x{byte:02x} in this row")
    if None in row:
        return RawRecord(path, line_no, payload, parse_error=f"row has {len(row[None])} more values "
                         "than the header has columns")
    return RawRecord(path, line_no, payload, fields=tuple(fields.items()))


_READERS = {"jsonl": _jsonl_records, "parquet": _parquet_records, "csv": _csv_records}


@beam.typehints.with_input_types(str)
@beam.typehints.with_output_types(RawRecord)
class _ReadFileFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, configured_format: str) -> None:
        self._format = configured_format

    def process(self, path: str) -> Iterator[RawRecord]:
        fmt = detect_format(path, self._format)
        count = 0
        try:
            with FileSystems.open(path) as handle:
                for record in _READERS[fmt](path, handle):
                    count += 1
                    yield record
        except Exception as exc:  # noqa: BLE001 - a file-level failure is one dead letter, not a crash
            yield _unreadable(path, fmt, count, exc)
            count += 1
        if count == 0:
            _log.warning("input file %s holds no records", path)
        beam.metrics.Metrics.counter("tierembed", "files_read").inc()


def _unreadable(path: str, fmt: str, count: int, exc: Exception) -> RawRecord:
    """The one record that stands for the unread rest of ``path`` (position: the next record)."""
    beam.metrics.Metrics.counter("tierembed", "files_unreadable").inc()
    read = f"after {count} records" if count else "before any record"
    _log.error("cannot read %s file %s (%s): %s: %s", fmt, path, read, type(exc).__name__, exc)
    return RawRecord(
        path, count + 1, "",
        parse_error=f"cannot read {fmt} file {path} {read}: {type(exc).__name__}: {exc}; "
        "the rest of the file was not read. Fix or re-export the file, then run again",
    )


class ReadDocuments(beam.PTransform):  # type: ignore[misc]
    """Read every record of ``source`` as a :class:`RawRecord`.

    Matching happens at construction, raising :class:`InputNotFoundError` for a missing
    path or an empty glob.
    """

    def __init__(self, source: str, input_format: str = "auto") -> None:
        super().__init__()
        self.source = source
        self.input_format = input_format
        self.paths = match_sources(source, input_format)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[RawRecord]:
        return (
            pbegin
            | "ListFiles" >> beam.Create(self.paths).with_output_types(str)
            | "ReadFiles" >> beam.ParDo(_ReadFileFn(self.input_format))
            | "CountRead" >> beam.Map(_count_read)
        )


def _count_read(record: RawRecord) -> RawRecord:
    beam.metrics.Metrics.counter("tierembed", "records_read").inc()
    return record
