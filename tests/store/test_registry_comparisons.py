"""Comparison results kept in the version registry (schema 2), and a schema-1 file migrated."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from store.registry import SCHEMA_VERSION, VersionRegistry
from tiering.compare import Evidence
from tiering.documents import Tier
from tiering.versions import ConfiguredVersion

_V1_SCHEMA = """
CREATE TABLE versions (version TEXT PRIMARY KEY, tier TEXT NOT NULL, state TEXT NOT NULL,
    traffic_weight REAL NOT NULL DEFAULT 0, shadow_sample REAL NOT NULL DEFAULT 0,
    changed_by TEXT NOT NULL DEFAULT '', changed_at TEXT NOT NULL DEFAULT '');
CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, by TEXT NOT NULL,
    action TEXT NOT NULL, version TEXT NOT NULL DEFAULT '', note TEXT NOT NULL DEFAULT '',
    before_json TEXT NOT NULL, after_json TEXT NOT NULL, undone_by INTEGER REFERENCES changes (seq));
INSERT INTO versions VALUES ('mini', 'local', 'live', 1.0, 0.0, 'seed', '2026-12-01 00:00:00Z');
PRAGMA user_version = 1;
"""


def _evidence(baseline: str, candidate: str, diff: float) -> Evidence:
    return Evidence(baseline, candidate, "nDCG@10", 0.6, 0.6 + diff, diff, diff - 0.02, diff + 0.02, 0.95,
                    37, 250, "queries.jsonl + qrels.tsv")


def test_comparisons_are_kept_newest_first_with_who_and_when(tmp_path: Path) -> None:
    ticks = iter(f"2026-12-05 10:00:0{n}Z" for n in range(10))
    reg = VersionRegistry(tmp_path / "registry.sqlite", clock=lambda: next(ticks))
    first = reg.record_comparison(_evidence("mini", "mini-b", -0.05), by="ana")
    reg.record_comparison(_evidence("mini", "other", 0.1), by="bob")
    reg.record_comparison(_evidence("mini", "mini-b", 0.08), by="bob")
    assert first.at == "2026-12-05 10:00:00Z" and first.by == "ana"
    mine = reg.comparisons("mini-b")
    assert [e.diff for e in mine] == [0.08, -0.05]
    assert mine[1] == first  # every field round-trips
    assert len(reg.comparisons()) == 3 and reg.comparisons("nobody") == []
    # kept across processes: a new handle on the same file reads the same
    assert VersionRegistry(tmp_path / "registry.sqlite").comparisons("mini-b") == mine


def test_a_schema_1_registry_gains_the_comparisons_table_and_keeps_its_versions(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_V1_SCHEMA)
    conn.close()
    reg = VersionRegistry(path)
    assert reg.snapshot().require("mini").traffic_weight == 1.0
    assert reg.reconcile([ConfiguredVersion("mini", Tier.LOCAL, 1.0)], by="t") == reg.snapshot()
    reg.record_comparison(_evidence("mini", "mini-b", 0.1), by="t")
    assert [e.candidate for e in reg.comparisons()] == ["mini-b"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
