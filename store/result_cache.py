"""Durable paid results: the API tier's vectors, kept as each reply arrives.

A paid embedding must not be paid for twice because a run died before its sink wrote it.
The API stage writes every 200 reply's vectors here the moment the reply arrives (one short
SQLite transaction per reply, before the documents move on to the sink), and reads this
cache before it sends anything: an input already paid for under the same key costs nothing
the next time. A run killed at any moment and started again therefore pays again only for
the requests that were in flight when it died. The cache sits before the store, so it
works the same for LanceDB, Weaviate or any other sink.

Key: the model version, the provider's model name, the requested dimensions, the
``input_type`` sent, and the SHA-256 of the input text exactly as sent (one chunk of a long
document; chunking is deterministic for a given model limit). Value: the vector (float32),
the tokens billed for it, the run that paid, and when.

Where and how long: ``api.result_cache.path`` (default ``.tierembed/api_results.sqlite``;
null turns it off) on a local disk of the machine that runs the API stage (SQLite in WAL
mode: many processes of one machine may share it; a network filesystem does not give
SQLite the locks it needs). Each run prunes entries older than ``api.result_cache.ttl_days``
(default 30) when it starts; delete the file to empty it. A vector also in the store is
normally skipped as unchanged before the API stage, so the cache mostly holds what a
killed run paid for and never wrote.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiering.errors import ConfigError

__all__ = ["CacheKey", "CachedVector", "ResultCache", "ResultCacheError"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    scope TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    vector BLOB NOT NULL,
    billed_tokens INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (scope, text_sha256)
);
CREATE INDEX IF NOT EXISTS results_age ON results (created_at);
"""


class ResultCacheError(ConfigError):
    """The result cache file cannot be opened or used; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class CacheKey:
    """What a cached vector is valid for: one model version as called."""

    version: str
    model: str
    dimensions: int | None = None
    input_type: str | None = None

    @property
    def scope(self) -> str:
        return f"{self.version}|{self.model}|{self.dimensions or ''}|{self.input_type or ''}"


@dataclass(frozen=True, slots=True)
class CachedVector:
    vector: list[float]
    billed_tokens: int
    run_id: str


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _rows_of(conn: sqlite3.Connection, key: CacheKey, digests: Iterable[str],
             columns: str) -> Iterator[tuple[Any, ...]]:
    """``columns`` of the rows of ``digests`` under ``key``, in parts of 500 digests
    (SQLite's bound-parameter limit)."""
    unique = sorted(set(digests))
    for start in range(0, len(unique), 500):
        part = unique[start:start + 500]
        yield from conn.execute(
            f"SELECT {columns} FROM results WHERE scope = ? "
            f"AND text_sha256 IN ({','.join('?' * len(part))})", (key.scope, *part))


class ResultCache:
    """The SQLite result cache; each call opens its own short connection (thread- and
    process-safe on one machine)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time,
                 busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self._clock = clock
        self._timeout = busy_timeout_s
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            for statement in (s.strip() for s in _SCHEMA.split(";")):
                if statement:
                    conn.execute(statement)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self._timeout)
        except (OSError, sqlite3.Error) as exc:
            raise ResultCacheError(
                f"cannot open the API result cache {self.path}: {exc}; set "
                "api.result_cache.path to a writable local file (or null to turn it off)"
            ) from exc
        try:
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at each commit's end
            with conn:  # one transaction
                yield conn
        except sqlite3.DatabaseError as exc:
            raise ResultCacheError(f"{self.path} is not a usable result cache: {exc}") from exc
        finally:
            conn.close()

    def get_many(self, key: CacheKey, texts: Sequence[str]) -> dict[int, CachedVector]:
        """The cached vectors of ``texts`` under ``key``, by position (misses left out)."""
        if not texts:
            return {}
        digests = [_digest(t) for t in texts]
        found: dict[str, CachedVector] = {}
        with self._connect() as conn:
            for digest, blob, billed, run_id in _rows_of(conn, key, digests,
                                                         "text_sha256, vector, billed_tokens, run_id"):
                vector = np.frombuffer(blob, dtype="<f4").astype(float).tolist()
                found[digest] = CachedVector(vector, int(billed), str(run_id))
        return {pos: found[d] for pos, d in enumerate(digests) if d in found}

    def has_any(self, key: CacheKey) -> bool:
        """Whether anything is cached under ``key`` (a first run's answer: no)."""
        with self._connect() as conn:
            row = conn.execute("SELECT 1 FROM results WHERE scope = ? LIMIT 1", (key.scope,)).fetchone()
        return row is not None

    def holds_all(self, key: CacheKey, docs: Sequence[Sequence[str]]) -> list[bool]:
        """For each document (its texts as sent), whether every text is cached under ``key``.

        One connection for all of them, digests only (no vector is read): what a pipeline
        asks of every document it plans, so it must cost next to nothing per document.
        """
        if not docs:
            return []
        digests = [[_digest(t) for t in texts] for texts in docs]
        with self._connect() as conn:
            found = {row[0] for row in _rows_of(conn, key, [d for ds in digests for d in ds], "text_sha256")}
        return [bool(ds) and all(d in found for d in ds) for ds in digests]

    def put_many(self, key: CacheKey, items: Iterable[tuple[str, Sequence[float], int]],
                 run_id: str) -> int:
        """Store ``(text, vector, billed tokens)`` items under ``key`` in one transaction."""
        now = self._clock()
        rows = [(key.scope, _digest(text), np.asarray(vector, dtype="<f4").tobytes(), int(billed),
                 run_id, now) for text, vector, billed in items]
        with self._connect() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO results (scope, text_sha256, vector, billed_tokens, run_id, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def prune(self, max_age_s: float) -> int:
        """Delete entries older than ``max_age_s``; returns how many went."""
        with self._connect() as conn:
            cursor = conn.execute("DELETE FROM results WHERE created_at < ?",
                                  (self._clock() - max_age_s,))
            return int(cursor.rowcount)

    def __len__(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
