"""The whole pipeline on the DirectRunner against the fake OpenAI-compatible server."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

import pytest

from beam_pipeline.pipeline import PipelineSpec, ResolvedApi, api_prices, run_pipeline
from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore
from tests.conftest import SettingsFactory, corpus, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer
from tiering.report import RunReport, build_report
from tiering.settings import TierembedSettings

PRICE = 2.0  # USD per 1M tokens: large enough to see, small enough never to matter


def _settings(make_settings: SettingsFactory, **extra: Any) -> TierembedSettings:
    overrides: dict[str, Any] = {
        "api": {"endpoint": "custom", "models": [
            {"version": "fake-v1", "model": "fake-embed", "price_per_million_tokens": PRICE,
             "max_tokens_per_input": 1000}]},
        "routing": {"rules": [{"field": "priority", "equals": "high", "tier": "api"}],
                    "api_threshold": 1.0,
                    "mode": "exclusive", "budget_decides": False},
        # scores are < 1: only the rule sends docs to the API, and only there
    }
    for k, v in extra.items():
        overrides[k] = {**overrides.get(k, {}), **v}
    return make_settings(overrides)


def _run(settings: TierembedSettings, server: FakeOpenAIServer, source: Path, run_id: str,
         full_refresh: bool = False) -> tuple[RunReport, str]:
    api = ResolvedApi(server.base_url, "test", "fake")
    spec = PipelineSpec(settings, str(source), run_id, None, api, full_refresh)
    outcome = run_pipeline(spec)
    prices = api_prices(settings)
    report = build_report(
        run_id=run_id, source=str(source), counters=outcome.counters,
        local_models={m.version: m.model for m in settings.local.models},
        api_models={m.version: (m.model, prices[m.version]) for m in settings.api.models},
        dead_letter_path=outcome.dead_letter_prefix,
    )
    return report, outcome.dead_letter_prefix


def _corpus_with_problems(tmp_path: Path) -> Path:
    docs = corpus(18, long_every=5)
    for d in docs[:6]:
        d["metadata"]["priority"] = "high"  # rule -> API tier
    bad = [
        "{not json", "[1, 2, 3]", {"text": "no id"}, {"id": "no-text"}, {"id": "num", "text": 7},
        {"id": "doc-001", "text": "duplicate id with other text"},
        {"id": "huge", "text": "x" * 10_500_000},
    ]
    src = tmp_path / "in"
    src.mkdir()
    write_jsonl(src / "docs.jsonl", docs)
    write_jsonl(src / "later.jsonl", bad)  # sorts after docs.jsonl: the duplicate there loses
    (src / "empty.jsonl").write_text("")
    return src


def _dead_letters(prefix: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for f in sorted(glob.glob(prefix + "*.jsonl")):
        rows += [json.loads(line) for line in Path(f).read_text().splitlines()]
    return rows


def test_full_run_embeds_both_tiers_and_accounts_for_every_record(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    settings = _settings(make_settings)
    report, prefix = _run(settings, fake_api, _corpus_with_problems(tmp_path), "run-1")

    assert report.records_read == 18 + 7
    assert report.documents_valid == 18
    assert report.accounting_ok()
    lines = {line.tier: line for line in report.lines}
    assert lines["api"].documents == 6 and lines["local"].documents == 12
    # long docs: 0 (~1425 est. tokens) and 5 (~900) on the API (limit 1000), 10 and 15 local (256)
    assert lines["api"].chunked_documents == 1 and lines["local"].chunked_documents == 2

    letters = _dead_letters(prefix)
    assert len(letters) == report.dead_letters == 7
    assert {d["error_type"] for d in letters} == {
        "ParseError", "MissingId", "MissingText", "InvalidText", "DuplicateId", "TextTooLong"}
    huge = next(d for d in letters if d["doc_id"] == "huge")
    assert "10,500,000 characters" in huge["message"] and len(huge["payload"]) < 100_000

    billed = fake_api.stats().billed_tokens_by_model["fake-embed"]
    assert lines["api"].billed_tokens == billed
    assert lines["api"].cost_usd == pytest.approx(billed * PRICE / 1e6, rel=1e-12)

    store = LanceDBStore(LanceDBSinkConfig(settings.sink.lancedb.uri))
    assert store.count("fake-v1") == 6 and store.count("minilm-l6-v2") == 12


def test_rerun_skips_unchanged_and_embeds_only_changed_documents(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    settings = _settings(make_settings)
    docs = corpus(8)
    for d in docs[:3]:
        d["metadata"]["priority"] = "high"
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    first, _ = _run(settings, fake_api, src, "r1")
    assert first.written == 8

    docs[0]["text"] += " Updated: price reduced."  # an API-tier document
    docs[7]["text"] += " Updated: new photos."    # a local-tier document
    write_jsonl(src, docs)
    billed_before = fake_api.stats().billed_tokens_total
    second, _ = _run(settings, fake_api, src, "r2")
    assert second.skipped_unchanged == 6 and second.written == 2 and second.accounting_ok()
    assert fake_api.stats().billed_tokens_total > billed_before  # only doc-000 was re-sent
    assert {line.tier: line.documents for line in second.lines} == {"local": 1, "api": 1}


def test_coverage_mode_gives_every_document_the_local_vector(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    settings = _settings(make_settings, routing={"mode": "coverage"})
    docs = corpus(6)
    docs[0]["metadata"]["priority"] = "high"
    report, _ = _run(settings, fake_api, write_jsonl(tmp_path / "d.jsonl", docs), "cov")
    assert report.accounting_ok()
    store = LanceDBStore(LanceDBSinkConfig(settings.sink.lancedb.uri))
    assert store.count("minilm-l6-v2") == 6 and store.count("fake-v1") == 1


def test_documents_reach_the_store_while_later_ones_are_still_being_embedded(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No stage between the embedders and the writer holds every embedded document: Beam's
    in-process runner materializes a multi-input Flatten, and one before the writer kept
    all vectors in memory and wrote none until the last was embedded (and lost them all to
    a kill). Both tiers here, so each writer sits beside other branches."""
    from beam_pipeline.local_embedder import LoadedLocalModel

    settings = _settings(make_settings, sink={"batch_size": 2}, local={"batch_size": 8})
    store = LanceDBStore(LanceDBSinkConfig(settings.sink.lancedb.uri))
    stored_at_each_call: list[int] = []
    encode = LoadedLocalModel.encode

    def recording(self: LoadedLocalModel, texts: list[str]) -> Any:
        stored_at_each_call.append(store.count("minilm-l6-v2"))
        return encode(self, texts)

    monkeypatch.setattr(LoadedLocalModel, "encode", recording)
    docs = corpus(200)
    for d in docs[:4]:
        d["metadata"]["priority"] = "high"  # the rule sends these to the API tier
    report, _ = _run(settings, fake_api, write_jsonl(tmp_path / "d.jsonl", docs), "stream")
    assert report.accounting_ok() and report.written == 200
    assert store.count("minilm-l6-v2") == 196 and store.count("fake-v1") == 4
    # the local tier tokenizes 64 waiting documents at a time (BucketedEncoder's admit), so
    # the first batches are embedded after 64 documents arrive and the last at the end:
    # by the last model call, the documents of the earlier ones are in the store
    assert stored_at_each_call[-1] >= 32, stored_at_each_call


def test_worker_share_defaults_to_one_over_direct_workers(make_settings: SettingsFactory) -> None:
    from beam_pipeline.pipeline import worker_share

    assert worker_share(make_settings()) == 1.0
    multi = make_settings({"pipeline": {"direct_running_mode": "multi_processing", "direct_num_workers": 4}})
    assert worker_share(multi) == 0.25
    explicit = make_settings({
        "api": {"worker_share": 0.5},
        "pipeline": {"direct_running_mode": "multi_threading", "direct_num_workers": 4},
    })
    assert worker_share(explicit) == 0.5
