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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from tiering.errors import InputNotFoundError
from tiering.validation import MAX_NESTING, RawRecord, nesting_depth

__all__ = ["ReadDocuments", "MatchedInput", "match_input", "match_sources", "detect_format", "read_file",
           "DEFAULT_MAX_RECORD_BYTES", "REPLAY_SUFFIX"]

_log = logging.getLogger(__name__)
# The csv module rejects fields over 131,072 chars by default; long documents are normal here
# (validation enforces input.max_text_chars). The limit is a C long: 2**31 - 1 fits everywhere.
_CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)
DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024  # input.max_record_bytes
REPLAY_SUFFIX = ".replay.jsonl"  # a replay set written by `tierembed replay` (see _replay_records)
_FORMATS = {
    REPLAY_SUFFIX: "replay",
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


@dataclass(frozen=True, slots=True)
class MatchedInput:
    """The files ``source`` names: those read, and those skipped for their extension."""

    paths: tuple[str, ...]
    skipped: tuple[str, ...]

    def skipped_note(self) -> str | None:
        """A line for the run report naming the skipped files, or None."""
        if not self.skipped:
            return None
        names = ", ".join(Path(p).name for p in self.skipped[:10])
        more = f" and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
        return (f"{len(self.skipped)} input file(s) skipped, not .jsonl, .parquet or .csv: {names}{more}; "
                "rename them, or set input.format to read every file in one format")


def match_input(source: str, configured_format: str = "auto") -> MatchedInput:
    """Expand ``source`` to the files it names; raise InputNotFoundError if none is readable."""
    pattern = source
    local = Path(source).expanduser()
    if "://" not in source and local.is_dir():
        pattern = str(local / "*")
    results = FileSystems.match([pattern])[0].metadata_list
    paths = sorted(m.path for m in results if not m.path.endswith("/") and not _is_dir(m.path))
    skipped: list[str] = []
    if configured_format == "auto":
        skipped = [p for p in paths if not _known(p)]
        paths = [p for p in paths if _known(p)]
    if not paths:
        what = "directory" if pattern != source else "path or glob"
        raise InputNotFoundError(
            f"no input files match {source!r} ({what}); expected .jsonl, .parquet or .csv "
            "files. Check the path, or quote the glob so the shell does not expand it"
            + (f" ({len(skipped)} file(s) of other kinds were found, e.g. {Path(skipped[0]).name})"
               if skipped else "")
        )
    return MatchedInput(tuple(paths), tuple(skipped))


def match_sources(source: str, configured_format: str = "auto") -> list[str]:
    """The files of ``source`` that will be read (see :func:`match_input`)."""
    return list(match_input(source, configured_format).paths)


def _is_dir(path: str) -> bool:
    return "://" not in path and Path(path).is_dir()


def _known(path: str) -> bool:
    try:
        detect_format(path)
    except InputNotFoundError:
        return False
    return True


# --- JSONL -----------------------------------------------------------------------------

_CHUNK_BYTES = 1 << 20
_PREVIEW_BYTES = 2000


def _bounded_lines(handle: BinaryIO, limit: int) -> Iterator[tuple[int, bytes, int]]:
    """(line number, line without its newline, 0) for each line of ``handle``; for a line
    over ``limit`` bytes: (line number, its first bytes, its full length). Never holds more
    than ``limit`` bytes of one line (read in chunks: compressed handles have no readline
    with a size)."""
    line_no, pending, skipped, preview = 0, b"", 0, b""
    while True:
        chunk = handle.read(_CHUNK_BYTES)
        if not chunk:
            break
        pending += chunk
        start = 0
        while (nl := pending.find(b"\n", start)) >= 0:
            line_no += 1
            line = pending[start:nl]
            if skipped:
                yield line_no, preview, skipped + len(line)
                skipped = 0
            elif len(line) > limit:
                yield line_no, line[:_PREVIEW_BYTES], len(line)
            else:
                yield line_no, line, 0
            start = nl + 1
        pending = pending[start:]
        if skipped:
            skipped += len(pending)
            pending = b""
        elif len(pending) > limit:
            preview, skipped, pending = pending[:_PREVIEW_BYTES], len(pending), b""
    if skipped:
        yield line_no + 1, preview, skipped
    elif pending:
        yield line_no + 1, pending, 0


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every line: json.loads with any keyword builds a new decoder per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _jsonl_records(path: str, handle: BinaryIO, limit: int) -> Iterator[RawRecord]:
    """One RawRecord per non-blank line; a line that cannot be decoded or parsed is a
    record with its parse error (and its bytes, base64 in the dead letter, when it is not
    UTF-8), and reading goes on with the next line."""
    for line_no, raw_line, too_long in _bounded_lines(handle, limit):
        if too_long:
            yield RawRecord(path, line_no, "", raw=raw_line, parse_error=(
                f"line is {too_long:,} bytes, over input.max_record_bytes={limit:,}; it was not read "
                "(the payload holds its first bytes). Split the record, or raise input.max_record_bytes"))
            continue
        try:
            line = raw_line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            bad = f"byte 0x{raw_line[exc.start]:02x} at byte {exc.start}"
            yield RawRecord(path, line_no, "", raw=raw_line, parse_error=f"not valid UTF-8: {bad}")
            continue
        if not line.strip():
            continue
        yield _json_record(path, line_no, line)


def _json_record(path: str, line_no: int, line: str) -> RawRecord:
    try:
        value = _DECODER.decode(line)
    except json.JSONDecodeError as exc:
        return RawRecord(path, line_no, line, parse_error=f"not valid JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return RawRecord(path, line_no, line, parse_error=f"not readable JSON: nested deeper than "
                         f"{MAX_NESTING} levels")
    except ValueError as exc:  # NaN/Infinity, integers of more than 4,300 digits
        return RawRecord(path, line_no, line, parse_error=f"not valid JSON: {exc}")
    if not isinstance(value, dict):
        return RawRecord(path, line_no, line,
                         parse_error=f"expected a JSON object, got a JSON {type(value).__name__}")
    # the depth cannot pass the number of opening brackets: count them first (in C)
    if line.count("[") + line.count("{") > MAX_NESTING and nesting_depth(value) > MAX_NESTING:
        return RawRecord(path, line_no, line, parse_error=f"not readable JSON: nested deeper than "
                         f"{MAX_NESTING} levels")
    return RawRecord(path, line_no, line, fields=tuple(value.items()))


# --- Parquet ---------------------------------------------------------------------------


def _parquet_records(path: str, handle: BinaryIO, limit: int) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    row_no = 0
    for batch in pq.ParquetFile(handle).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            row_no += 1
            payload = json.dumps(row, default=str, ensure_ascii=False)
            if nesting_depth(row) > MAX_NESTING:
                yield RawRecord(path, row_no, payload[:_PREVIEW_BYTES],
                                parse_error=f"row nests deeper than {MAX_NESTING} levels")
                continue
            yield RawRecord(path, row_no, payload, fields=tuple(row.items()))


# --- CSV -------------------------------------------------------------------------------


class _RecordTooLong(Exception):
    """Raised from inside the csv reader's line source to stop a runaway record."""


class _LineTap:
    """The csv reader's line source: hands it one physical line at a time (each at most
    ``limit`` chars) and remembers the lines of the record being read, so a broken record
    can be re-read line by line. The csv module reads no further than the end of the
    record it returns, so after each record the tap holds exactly that record's lines."""

    def __init__(self, text: io.TextIOBase, limit: int) -> None:
        self._text = text
        self._limit = limit
        self.line_no = 0
        self.lines: list[tuple[int, str]] = []
        self.overlong: dict[int, int] = {}  # line number -> its length; only a preview is kept
        self._size = 0

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = self._text.readline(self._limit + 1)
        if not line:
            raise StopIteration
        self.line_no += 1
        if len(line) > self._limit and not line.endswith(("\n", "\r")):
            size = len(line)
            while (rest := self._text.readline(_CHUNK_BYTES)) and not rest.endswith(("\n", "\r")):
                size += len(rest)
            self.lines.append((self.line_no, line[:_PREVIEW_BYTES]))
            self.overlong[self.line_no] = size + len(rest)
            raise _RecordTooLong(f"line {self.line_no} is {size + len(rest):,} characters, over "
                                 f"input.max_record_bytes={self._limit:,}; it was not read")
        self.lines.append((self.line_no, line))
        self._size += len(line)
        if self._size > self._limit:
            raise _RecordTooLong(f"a record starting at line {self.lines[0][0]} runs past "
                                 f"input.max_record_bytes={self._limit:,} (an unterminated quote?)")
        return line

    def take(self) -> tuple[list[tuple[int, str]], dict[int, int]]:
        """The lines of the record just read, and which of them were too long to read."""
        taken = self.lines, self.overlong
        self.lines, self.overlong, self._size = [], {}, 0
        return taken


def _csv_records(path: str, handle: BinaryIO, limit: int) -> Iterator[RawRecord]:
    """One RawRecord per CSV record, read by the csv module in strict mode.

    Containment of a broken quote: a record that the csv module cannot parse (a quote
    followed by text, a quoted field still open at the end of the file, a record past
    ``limit``), or that spans several lines yet has more or fewer values than the header,
    is re-read line by line: each of its lines that parses on its own with the header's
    number of values is a record, every other line a dead letter naming the region. So an
    unterminated quote costs the line that holds it, never the rows after it. A stray quote
    that happens to close on a later line with the header's number of values cannot be told
    from a legitimate multi-line field and is read as one record (its payload shows it)."""
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    # surrogateescape keeps undecodable bytes in the text, so the bad row is found and
    # dead-lettered by itself (with its exact bytes) while the rest of the file still reads
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="surrogateescape", newline="")
    tap = _LineTap(text, limit)
    reader = csv.reader(tap, strict=True)
    header = _csv_header(path, reader, tap)
    if header is None:
        return
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except (csv.Error, _RecordTooLong) as exc:
            yield from _reread_lines(path, *tap.take(), header, str(exc))
            continue
        lines, _ = tap.take()
        if not values:
            continue  # a blank line
        if len(lines) > 1 and len(values) != len(header):
            why = (f"a record over lines {lines[0][0]}-{lines[-1][0]} has {len(values)} values, "
                   f"the header {len(header)}")
            yield from _reread_lines(path, lines, {}, header, why)
            continue
        yield _csv_record(path, lines, header, values)


def _csv_header(path: str, reader: Iterator[list[str]], tap: _LineTap) -> list[str] | None:
    try:
        header = next(reader)
    except StopIteration:
        return None
    except (csv.Error, _RecordTooLong) as exc:
        raise ValueError(f"the header row cannot be read: {exc}") from exc
    tap.take()
    return header


def _reread_lines(path: str, lines: list[tuple[int, str]], overlong: dict[int, int], header: list[str],
                  why: str) -> Iterator[RawRecord]:
    span = f"lines {lines[0][0]}-{lines[-1][0]}" if len(lines) > 1 else f"line {lines[0][0]}"
    for line_no, line in lines:
        if line_no in overlong:
            yield _csv_broken(path, line_no, line, f"line is {overlong[line_no]:,} characters, over "
                              "input.max_record_bytes; it was not read (the payload holds its start). "
                              "Split the record, or raise input.max_record_bytes")
            continue
        if not line.strip():
            continue
        try:
            values = next(csv.reader([line], strict=True))
        except (csv.Error, StopIteration) as exc:
            values, error = [], str(exc) or "no values"
        else:
            error = "" if len(values) == len(header) else (
                f"{len(values)} values, the header has {len(header)}")
        if error:
            yield _csv_broken(path, line_no, line, f"malformed CSV ({why}); re-read {span} line by line: "
                              f"this line does not parse on its own: {error}")
        else:
            yield _csv_record(path, [(line_no, line)], header, values)


def _csv_broken(path: str, line_no: int, text: str, reason: str) -> RawRecord:
    raw = text.encode("utf-8", "surrogateescape")
    try:
        shown = raw.decode("utf-8")
    except UnicodeDecodeError:
        return RawRecord(path, line_no, "", raw=raw, parse_error=reason)
    return RawRecord(path, line_no, shown.rstrip("\r\n"), parse_error=reason)


def _csv_record(path: str, lines: list[tuple[int, str]], header: list[str], values: list[str]) -> RawRecord:
    line_no = lines[0][0]
    if len(values) > len(header):
        return _csv_broken(path, line_no, "".join(line for _, line in lines),
                           f"row has {len(values) - len(header)} more values than the header has columns")
    if len(values) < len(header):  # a short row reads like csv.DictReader's: the rest is null
        values = [*values, *[None] * (len(header) - len(values))]  # type: ignore[list-item]
    fields = dict(zip(header, values, strict=True))
    payload = json.dumps(fields, ensure_ascii=False)
    try:
        payload.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = ord(payload[exc.start]) - 0xDC00  # surrogateescape maps byte b to U+DC00 + b
        raw = "".join(line for _, line in lines).encode("utf-8", "surrogateescape")
        return RawRecord(path, line_no, "", raw=raw,
                         parse_error=f"not valid UTF-8: byte 0x{byte:02x} in this row")
    return RawRecord(path, line_no, payload, fields=tuple(fields.items()))


# --- replay sets -----------------------------------------------------------------------


def _replay_records(path: str, handle: BinaryIO, limit: int) -> Iterator[RawRecord]:
    """A replay set (written by ``tierembed replay``, see flows.replay): each line is
    ``{"source": original location, "record": the input record}`` (or ``"raw"``: the
    record's text when it was not a JSON object); records keep their original location."""
    for record in _jsonl_records(path, handle, limit):
        fields = dict(record.fields or ())
        inner, raw, origin = fields.get("record"), fields.get("raw"), fields.get("source")
        if record.parse_error is not None or not (isinstance(inner, dict) or isinstance(raw, str)):
            yield record
            continue
        src, _, pos = str(origin or "").rpartition(":")
        if not (src and pos.isdigit()):
            src, pos = record.source, str(record.position)
        if isinstance(inner, dict):
            yield RawRecord(src, int(pos), json.dumps(inner, ensure_ascii=False), fields=tuple(inner.items()))
        else:
            yield _json_record(src, int(pos), str(raw))


_READERS = {"jsonl": _jsonl_records, "parquet": _parquet_records, "csv": _csv_records,
            "replay": _replay_records}


@beam.typehints.with_input_types(str)
@beam.typehints.with_output_types(RawRecord)
class _ReadFileFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, configured_format: str, max_record_bytes: int) -> None:
        self._format = configured_format
        self._limit = max_record_bytes

    def process(self, path: str) -> Iterator[RawRecord]:
        yield from read_file(path, self._format, self._limit)
        beam.metrics.Metrics.counter("tierembed", "files_read").inc()


def read_file(path: str, configured_format: str = "auto",
              max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[RawRecord]:
    """Every record of one file, as :class:`ReadDocuments` reads it (usable outside Beam).

    Guarantees: JSONL gives one record per non-blank line, whatever the line holds; CSV one
    per record, a broken quote contained as ``_csv_records`` says; Parquet one per row. A
    file that cannot be read on gives one record for the rest of it. Never raises for what
    the file holds."""
    fmt = detect_format(path, configured_format)
    count = 0
    try:
        with FileSystems.open(path) as handle:
            for record in _READERS[fmt](path, handle, max_record_bytes):
                count += 1
                yield record
    except Exception as exc:  # noqa: BLE001 - a file-level failure is one dead letter, not a crash
        yield _unreadable(path, fmt, count, exc)
        count += 1
    if count == 0:
        _log.warning("input file %s holds no records", path)


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

    def __init__(self, source: str, input_format: str = "auto",
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        super().__init__()
        self.source = source
        self.input_format = input_format
        self.max_record_bytes = max_record_bytes
        self.paths = match_sources(source, input_format)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[RawRecord]:
        return (
            pbegin
            | "ListFiles" >> beam.Create(self.paths).with_output_types(str)
            | "ReadFiles" >> beam.ParDo(_ReadFileFn(self.input_format, self.max_record_bytes))
            | "CountRead" >> beam.Map(_count_read)
        )


def _count_read(record: RawRecord) -> RawRecord:
    beam.metrics.Metrics.counter("tierembed", "records_read").inc()
    return record
