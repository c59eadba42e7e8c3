"""One SQLite file shared by runs, workers and the command line.

WAL mode with a busy timeout, one short connection per call (so an instance may be shared by
threads and many processes may use the same file), every read-modify-write one ``BEGIN
IMMEDIATE`` transaction (the write lock is taken before the first read, so two writers
never interleave), and a schema created or checked once with ``PRAGMA user_version``.
Network filesystems (NFS, SMB) do not give SQLite the locking it needs: local disks only.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tiering.errors import ConfigError

__all__ = ["SqliteFile", "StoreFileError", "open_connection", "immediate_transaction", "snapshot"]


def open_connection(path: Path, busy_timeout_ms: int,
                    error: Callable[[Exception], Exception]) -> sqlite3.Connection:
    """A short connection to ``path`` (created with its folder): rows by name, a busy
    timeout, foreign keys on, transactions begun explicitly. ``error`` makes the exception
    raised when the file cannot be opened (naming the file and the setting that moves it)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are begun explicitly
        conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise error(exc) from exc
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextmanager
def immediate_transaction(connect: Callable[[], sqlite3.Connection]) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction: the write lock is taken before the first read, so
    a read-modify-write never interleaves with another writer; committed when the block ends
    normally, rolled back otherwise."""
    conn = connect()
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


@contextmanager
def snapshot(connect: Callable[[], sqlite3.Connection]) -> Iterator[sqlite3.Connection]:
    """One consistent snapshot for multi-query reads."""
    conn = connect()
    try:
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


class StoreFileError(ConfigError):
    """The file cannot be opened, is not WAL-capable, or has a newer schema; says why."""


class SqliteFile:
    """``what`` names the file in messages ("version registry"); ``setting`` is the setting
    that moves it (``registry.path``)."""

    def __init__(self, path: str | Path, *, what: str, setting: str, schema: str, schema_version: int,
                 error: type[StoreFileError] = StoreFileError, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self._what = what
        self._setting = setting
        self._schema = [s.strip() for s in schema.split(";") if s.strip()]
        self._version = schema_version
        self._error = error
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._ensure_schema()

    def connect(self) -> sqlite3.Connection:
        return open_connection(self.path, self._busy_timeout_ms, lambda exc: self._error(
            f"cannot open the {self._what} {self.path}: {exc}; set {self._setting} to a writable local file"))

    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction, committed when the block ends normally."""
        return immediate_transaction(self.connect)

    def read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One consistent snapshot for multi-query reads."""
        return snapshot(self.connect)

    def _ensure_schema(self) -> None:
        """Switching a new file to WAL needs an exclusive lock for which SQLite does not
        always run the busy handler, so processes that open a new file at the same moment can
        get SQLITE_BUSY at once: retry within the timeout."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        delay = 0.01
        while True:
            try:
                self._ensure_schema_once()
                return
            except StoreFileError as exc:
                code = (getattr(exc.__cause__, "sqlite_errorcode", 0) or 0) & 0xFF  # primary code
                if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _ensure_schema_once(self) -> None:
        conn = self.connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise self._error(f"the {self._what} {self.path} cannot use WAL mode (got {mode!r}); "
                                  f"put {self._setting} on a local disk")
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found > self._version:
                raise self._error(f"the {self._what} {self.path} has schema {found}, newer than this "
                                  f"tierembed understands ({self._version}); upgrade tierembed")
            conn.execute("BEGIN IMMEDIATE")
            for statement in self._schema:  # one by one: executescript() would COMMIT
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {self._version}")
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._error(f"{self.path} is not a usable {self._what}: {exc}") from exc
        finally:
            conn.close()
