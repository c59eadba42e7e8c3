"""The model-version registry: each version's state and weight, and every change to them.

A SQLite file (``registry.path``, default ``.tierembed/registry.sqlite``, beside the spend
ledger) shared by runs and the command line, so a promotion made by one is what the next
run routes by and what search serves. Every change is one transaction that stores the
whole registry before and after it, so ``rollback`` restores exactly the state before the
latest change not yet rolled back (an undo stack: rolling back twice undoes two changes)
and nothing is re-embedded: vectors stay in the store whatever the state. It also keeps
the results of ``tierembed models compare`` (table ``comparisons``, schema 2; a schema-1 file
gains the table when first opened), which ``promote`` reads as its evidence.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from store.sqlite import SqliteFile, StoreFileError
from tiering.compare import Evidence
from tiering.documents import Tier
from tiering.settings import TierembedSettings
from tiering.versions import (
    ConfiguredVersion,
    Registry,
    VersionEntry,
    VersionError,
    VersionState,
    reconcile_configured,
)

__all__ = ["RegistryFileError", "RegistryChange", "VersionRegistry", "Change", "registry_path",
           "configured_versions", "open_registry"]

SCHEMA_VERSION = 2  # 2: the comparisons table (``tierembed models compare``)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    version TEXT PRIMARY KEY,
    tier TEXT NOT NULL CHECK (tier IN ('local', 'api')),
    state TEXT NOT NULL CHECK (state IN ('candidate', 'shadow', 'live', 'retired')),
    traffic_weight REAL NOT NULL DEFAULT 0,
    shadow_sample REAL NOT NULL DEFAULT 0,
    changed_by TEXT NOT NULL DEFAULT '',
    changed_at TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    by TEXT NOT NULL,
    action TEXT NOT NULL,
    version TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    before_json TEXT NOT NULL,
    after_json TEXT NOT NULL,
    undone_by INTEGER REFERENCES changes (seq)
);
CREATE TABLE IF NOT EXISTS comparisons (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    by TEXT NOT NULL,
    baseline TEXT NOT NULL,
    candidate TEXT NOT NULL,
    measure TEXT NOT NULL,
    baseline_mean REAL NOT NULL,
    candidate_mean REAL NOT NULL,
    diff REAL NOT NULL,
    low REAL NOT NULL,
    high REAL NOT NULL,
    confidence REAL NOT NULL,
    queries INTEGER NOT NULL,
    documents INTEGER NOT NULL,
    query_set TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS comparisons_pair ON comparisons (baseline, candidate)
"""

Change = Callable[[Registry], Registry]


class RegistryFileError(StoreFileError):
    """The registry file cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """One line of the registry's history."""

    seq: int
    at: str
    by: str
    action: str
    version: str
    note: str
    before: Registry
    after: Registry
    undone_by: int | None


def _to_json(registry: Registry) -> str:
    return json.dumps([{**asdict(e), "tier": e.tier.value, "state": e.state.value} for e in registry.entries],
                      sort_keys=True)


def _from_json(text: str) -> Registry:
    return Registry().with_entries(
        VersionEntry(d["version"], Tier(d["tier"]), VersionState(d["state"]), d["traffic_weight"],
                     d["shadow_sample"], d["changed_by"], d["changed_at"]) for d in json.loads(text))


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class VersionRegistry:
    def __init__(self, path: str | Path, *, clock: Callable[[], str] = _utc_now) -> None:
        self._db = SqliteFile(path, what="version registry", setting="registry.path", schema=_SCHEMA,
                              schema_version=SCHEMA_VERSION, error=RegistryFileError)
        self.path = self._db.path
        self._clock = clock

    def now(self) -> str:
        return self._clock()

    def snapshot(self) -> Registry:
        with self._db.read() as conn:
            return self._load(conn)

    @staticmethod
    def _load(conn: sqlite3.Connection) -> Registry:
        rows = conn.execute("SELECT * FROM versions").fetchall()
        return Registry().with_entries(
            VersionEntry(r["version"], Tier(r["tier"]), VersionState(r["state"]), float(r["traffic_weight"]),
                         float(r["shadow_sample"]), r["changed_by"], r["changed_at"]) for r in rows)

    @staticmethod
    def _store(conn: sqlite3.Connection, registry: Registry) -> None:
        conn.execute("DELETE FROM versions")
        conn.executemany(
            "INSERT INTO versions (version, tier, state, traffic_weight, shadow_sample, changed_by, "
            "changed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(e.version, e.tier.value, e.state.value, e.traffic_weight, e.shadow_sample, e.changed_by,
              e.changed_at) for e in registry.entries])

    def apply(self, action: str, version: str, change: Change, *, by: str, note: str = "") -> RegistryChange:
        """Apply ``change`` to the current registry in one transaction and record it."""
        with self._db.write() as conn:
            before = self._load(conn)
            after = change(before)
            return self._record(conn, action, version, before, after, by, note)

    def _record(self, conn: sqlite3.Connection, action: str, version: str, before: Registry,
                after: Registry, by: str, note: str) -> RegistryChange:
        self._store(conn, after)
        at = self._clock()
        cur = conn.execute(
            "INSERT INTO changes (at, by, action, version, note, before_json, after_json) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, by, action, version, note, _to_json(before), _to_json(after)))
        return RegistryChange(int(cur.lastrowid or 0), at, by, action, version, note, before, after, None)

    def reconcile(self, configured: list[ConfiguredVersion], *, by: str) -> Registry:
        """The registry brought up to date with the settings (see
        :func:`tiering.versions.reconcile_configured`); records a change only when it moved."""
        with self._db.write() as conn:
            before = self._load(conn)
            after = reconcile_configured(before, configured, by=by, at=self._clock())
            if after != before:
                action = "seeded" if not before.entries else "registered"
                added = [e.version for e in after.entries if before.get(e.version) is None]
                self._record(conn, action, ",".join(added), before, after, by,
                             "from the settings (local.models / api.models)")
            return after

    def rollback(self, *, by: str) -> RegistryChange:
        """Restore the registry as it was before the latest change not yet rolled back."""
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT * FROM changes WHERE action NOT IN ('rollback', 'seeded', 'registered') "
                "AND undone_by IS NULL ORDER BY seq DESC LIMIT 1").fetchone()
            if row is None:
                raise VersionError("nothing to roll back: no promote, shadow or retire is on record "
                                   "that has not been rolled back already")
            current = self._load(conn)
            restored = _merge_registered(_from_json(row["before_json"]), current)
            change = self._record(conn, "rollback", row["version"], current, restored, by,
                                  f"undid #{row['seq']} ({row['action']} {row['version']})")
            conn.execute("UPDATE changes SET undone_by = ? WHERE seq = ?", (change.seq, row["seq"]))
            return change

    def record_comparison(self, evidence: Evidence, *, by: str) -> Evidence:
        """Keep a comparison's result (``tierembed models compare``) for promotion to read."""
        at = self._clock()
        e = evidence
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO comparisons (at, by, baseline, candidate, measure, baseline_mean, "
                "candidate_mean, diff, low, high, confidence, queries, documents, query_set) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (at, by, e.baseline, e.candidate, e.measure, e.baseline_mean, e.candidate_mean, e.diff,
                 e.low, e.high, e.confidence, e.queries, e.documents, e.query_set))
        return replace(e, at=at, by=by)

    def comparisons(self, version: str | None = None, limit: int = 50) -> list[Evidence]:
        """Recorded comparisons, newest first; with ``version``, those it took part in."""
        where, args = ("WHERE baseline = ? OR candidate = ?", [version, version]) if version else ("", [])
        with self._db.read() as conn:
            rows = conn.execute(f"SELECT * FROM comparisons {where} ORDER BY seq DESC LIMIT ?",
                                (*args, limit)).fetchall()
        return [Evidence(r["baseline"], r["candidate"], r["measure"], float(r["baseline_mean"]),
                         float(r["candidate_mean"]), float(r["diff"]), float(r["low"]), float(r["high"]),
                         float(r["confidence"]), int(r["queries"]), int(r["documents"]), r["query_set"],
                         r["at"], r["by"]) for r in rows]

    def history(self, limit: int = 50) -> list[RegistryChange]:
        with self._db.read() as conn:
            rows = conn.execute("SELECT * FROM changes ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [RegistryChange(int(r["seq"]), r["at"], r["by"], r["action"], r["version"], r["note"],
                               _from_json(r["before_json"]), _from_json(r["after_json"]),
                               r["undone_by"]) for r in rows]


def _merge_registered(restored: Registry, current: Registry) -> Registry:
    """Versions registered after the undone change (new in the settings) stay, as they are."""
    extra = [e for e in current.entries if restored.get(e.version) is None]
    return restored.with_entries((*restored.entries, *extra)) if extra else restored


def registry_path(settings: TierembedSettings) -> Path:
    """``registry.path``, or ``registry.sqlite`` beside the spend ledger."""
    if settings.registry.path:
        return Path(settings.registry.path).expanduser()
    return Path(settings.budget.ledger_path).expanduser().parent / "registry.sqlite"


def configured_versions(settings: TierembedSettings) -> list[ConfiguredVersion]:
    return ([ConfiguredVersion(m.version, Tier.LOCAL, m.traffic_weight) for m in settings.local.models]
            + [ConfiguredVersion(m.version, Tier.API, m.traffic_weight) for m in settings.api.models])


def open_registry(settings: TierembedSettings, *, by: str) -> tuple[VersionRegistry, Registry]:
    """The registry of ``settings``, brought up to date with the versions they declare."""
    registry = VersionRegistry(registry_path(settings))
    return registry, registry.reconcile(configured_versions(settings), by=by)
