"""Run progress: how far a running pipeline has got, for the flow's progress artifact.

Workers cannot reach the Prefect flow that launched them, so each process that writes
embeddings or dead letters keeps its own small JSON file in the run's progress folder
(``<telemetry.progress_dir or the system temp folder>/tierembed-progress/<run id>/``),
rewritten atomically at most every ``min_interval_s`` and when the process exits. The flow
sums the files (:func:`read_progress`) and compares the sum with the number of input
records (:func:`count_records`).

This works for every process on the flow's machine (DirectRunner in any mode, a Prefect
process worker). Workers of a distributed runner write to their own disks: the flow then
sees no progress until the run ends, and the artifact jumps to 100%.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "RunProgress",
    "ProgressRecorder",
    "run_progress_dir",
    "progress_recorder",
    "read_progress",
    "count_records",
]

_log = logging.getLogger(__name__)
_FIELDS = ("written", "dead_lettered", "fell_back", "api_documents", "api_tokens", "api_cost_usd",
           "api_requests", "api_429", "api_wait_s")


def run_progress_dir(progress_dir: str | None, run_id: str) -> str:
    """The folder where the processes of run ``run_id`` leave their progress files."""
    base = Path(progress_dir) if progress_dir else Path(tempfile.gettempdir())
    return str(base / "tierembed-progress" / run_id)


@dataclass(frozen=True, slots=True)
class RunProgress:
    """Progress summed over the files of one run. Counts are (document, model version)
    targets written to the store, dead letters, and documents that fell back to local;
    ``api_*`` is the API tier's work as its replies arrive (documents whose every chunk has
    a vector, billed tokens and dollars, requests, 429 replies, seconds waited for the
    provider's rate limits)."""

    written: int = 0
    dead_lettered: int = 0
    fell_back: int = 0
    processes: int = 0
    api_documents: int = 0
    api_tokens: int = 0
    api_cost_usd: float = 0.0
    api_requests: int = 0
    api_429: int = 0
    api_wait_s: float = 0.0

    @property
    def done(self) -> int:
        """Targets that reached an end: written or dead-lettered."""
        return self.written + self.dead_lettered


class ProgressRecorder:
    """This process's progress file for one run; thread-safe, writes throttled."""

    def __init__(self, directory: str, *, min_interval_s: float = 0.5) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self._counts: dict[str, float] = dict.fromkeys(_FIELDS, 0)
        self._lock = threading.Lock()
        self._min_interval_s = min_interval_s
        self._written_at = float("-inf")  # the first add writes at once
        self._dirty = False

    def add(self, **counts: float) -> None:
        """Add to this process's counts (names from :class:`RunProgress`)."""
        unknown = set(counts) - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown progress fields {sorted(unknown)}; known: {_FIELDS}")
        with self._lock:
            for name, value in counts.items():
                self._counts[name] += value
            self._dirty = True
            if time.monotonic() - self._written_at >= self._min_interval_s:
                self._write_locked()

    def close(self) -> None:
        """Write what is left unwritten (also runs at interpreter exit)."""
        with self._lock:
            if self._dirty:
                self._write_locked()

    def _write_locked(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._counts), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:  # progress is a convenience: never fail a run for it
            _log.warning("cannot write run progress to %s: %s", self.path, exc)
        self._written_at = time.monotonic()
        self._dirty = False


_recorders: dict[str, ProgressRecorder] = {}
_recorders_lock = threading.Lock()


def progress_recorder(directory: str) -> ProgressRecorder:
    """The one recorder of this process for ``directory`` (DoFns of a process share it)."""
    with _recorders_lock:
        recorder = _recorders.get(directory)
        if recorder is None:
            recorder = _recorders[directory] = ProgressRecorder(directory)
            atexit.register(recorder.close)
        return recorder


def read_progress(directory: str) -> RunProgress:
    """Sum the progress files of one run (missing folder: nothing yet)."""
    totals: dict[str, float] = dict.fromkeys(_FIELDS, 0)
    files = 0
    for path in Path(directory).glob("*.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being replaced right now, or foreign: the next poll sees it
        files += 1
        for key in _FIELDS:
            totals[key] += float(data.get(key, 0))
    floats = {"api_cost_usd", "api_wait_s"}
    return RunProgress(processes=files, **{k: v if k in floats else int(v) for k, v in totals.items()})


def count_records(source: str, configured_format: str = "auto") -> int:
    """Records in the input (the denominator of the progress): JSONL non-blank lines,
    CSV data rows, Parquet rows from the file footers. Reads every JSONL/CSV file once."""
    from apache_beam.io.filesystems import FileSystems

    from beam_pipeline.read import detect_format, match_sources

    total = 0
    for path in match_sources(source, configured_format):
        fmt = detect_format(path, configured_format)
        with FileSystems.open(path) as handle:
            total += _count(fmt, handle)
    return total


def _count(fmt: str, handle: BinaryIO) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(handle).metadata.num_rows)
    if fmt == "csv":
        rows = csv.reader(io.TextIOWrapper(handle, encoding="utf-8", errors="replace", newline=""))
        return max(0, sum(1 for _ in rows) - 1)
    return sum(1 for line in handle if line.strip())
