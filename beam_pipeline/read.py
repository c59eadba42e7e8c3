"""ReadDocuments: JSONL, Parquet and CSV from local paths or any Beam filesystem.

The source (a path, a directory or a glob, on any filesystem Beam knows: gs://, s3://, ...)
is matched when the pipeline is built, so a missing file or an empty glob fails at once with
a clear message instead of deep inside a worker. Each file is read by one worker; every
record leaves as a ``RawRecord`` holding its ``path:line`` (or row) and its raw payload, so a
record that cannot be parsed becomes a dead letter in the next stage, never an exception.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from tiering.errors import InputNotFoundError
from tiering.validation import RawRecord

__all__ = ["ReadDocuments", "match_sources", "detect_format"]

_log = logging.getLogger(__name__)
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


def _jsonl_records(path: str, handle: io.BufferedIOBase) -> Iterator[RawRecord]:
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


def _parquet_records(path: str, handle: io.BufferedIOBase) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    row_no = 0
    for batch in pq.ParquetFile(handle).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            row_no += 1
            yield RawRecord(path, row_no, json.dumps(row, default=str, ensure_ascii=False),
                            fields=tuple(row.items()))


def _csv_records(path: str, handle: io.BufferedIOBase) -> Iterator[RawRecord]:
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    reader = csv.DictReader(text)
    for row in reader:
        fields = {k: v for k, v in row.items() if k is not None}
        payload = json.dumps(fields, ensure_ascii=False)
        if None in row:
            yield RawRecord(path, reader.line_num, payload,
                            parse_error=f"row has {len(row[None])} more values than the header has columns")
            continue
        yield RawRecord(path, reader.line_num, payload, fields=tuple(fields.items()))


_READERS = {"jsonl": _jsonl_records, "parquet": _parquet_records, "csv": _csv_records}


class _ReadFileFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, configured_format: str) -> None:
        self._format = configured_format

    def process(self, path: str) -> Iterator[RawRecord]:
        fmt = detect_format(path, self._format)
        count = 0
        with FileSystems.open(path) as handle:
            for record in _READERS[fmt](path, handle):
                count += 1
                yield record
        if count == 0:
            _log.warning("input file %s holds no records", path)
        beam.metrics.Metrics.counter("tierembed", "files_read").inc()


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
            | "ListFiles" >> beam.Create(self.paths)
            | "ReadFiles" >> beam.ParDo(_ReadFileFn(self.input_format))
            | "CountRead" >> beam.Map(_count_read)
        )


def _count_read(record: RawRecord) -> RawRecord:
    beam.metrics.Metrics.counter("tierembed", "records_read").inc()
    return record
