"""Search and eval over a real store written by the pipeline (MiniLM locally, the fake
OpenAI-compatible server as the API tier): calibrated fusion, models kept across queries,
paid query and calibration embeddings in the spend ledger, and the eval report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from beam_pipeline.pipeline import PipelineSpec, ResolvedApi, run_pipeline
from flows.eval import EvalOptions, evaluate_store
from flows.eval_report import render_table, write_chart
from flows.search import open_searcher
from store.ledger import SpendLedger
from tests.conftest import SettingsFactory, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer
from tiering.fusion import FusionMethod
from tiering.settings import TierembedSettings

pytestmark = pytest.mark.slow

TOPICS = ["garden", "garage", "balcony", "cellar", "pool", "terrace", "fireplace", "attic"]


def _docs() -> list[dict[str, Any]]:
    docs = []
    for i in range(48):
        topic = TOPICS[i % len(TOPICS)]
        docs.append({"id": f"d{i:02d}", "text": f"Listing {i}: a house with a {topic} in district "
                     f"{i % 5}, {60 + i} square metres, near the {TOPICS[(i + 3) % 8]} shop."})
    return docs


def _store(tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer) -> TierembedSettings:
    settings = make_settings({
        "api": {"endpoint": "custom", "base_url": fake_api.base_url, "api_key": "test",
                "models": [{"version": "fake-v1", "model": "fake-embed", "price_per_million_tokens": 2.0}]},
        "search": {"calibration_dir": str(tmp_path / "calibration"), "reference_size": 32},
    })
    src = write_jsonl(tmp_path / "docs.jsonl", _docs())
    outcome = run_pipeline(PipelineSpec(settings, str(src), "r1", None,
                                        ResolvedApi(fake_api.base_url, "test", "fake")))
    written = {k: v for k, v in outcome.counters.items() if k.startswith("written.")}
    # coverage (the default): every document locally, the rank-normalised top 30% also via the API
    assert written["written.minilm-l6-v2"] == 48 and 10 <= written["written.fake-v1"] <= 20
    return settings


def test_search_fuses_calibrated_scores_keeps_models_and_records_paid_queries(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    settings = _store(tmp_path, make_settings, fake_api)
    before = fake_api.stats().billed_tokens_total
    with open_searcher(settings) as searcher:
        assert searcher.versions == ["minilm-l6-v2", "fake-v1"]
        first = searcher.search("house with a pool", k=5)
        local = searcher.embedders["minilm-l6-v2"]
        model = local._model  # loaded by the first query
        second = searcher.search("house with a garage", k=5)
        assert local._model is model  # not reloaded for the second query
    assert first[0].method == "zscore" and all("minilm-l6-v2" in h.calibrated for h in first)
    assert "pool" in first[0].text and "garage" in second[0].text
    assert all(first[i].fused >= first[i + 1].fused for i in range(4))
    # the reference sample was built once and kept next to the store
    assert sorted(p.name for p in (tmp_path / "calibration").iterdir()) == [
        "docs__fake_v1.npz", "docs__minilm_l6_v2.npz"]
    # every token the API billed for this search (queries and reference documents) is in the ledger
    billed = fake_api.stats().billed_tokens_total - before
    assert billed > 0
    (run,) = [r for r in SpendLedger(settings.budget.ledger_path).runs() if r.run_id.startswith("search-")]
    lines = SpendLedger(settings.budget.ledger_path).run_lines(run.run_id)
    assert run.status == "succeeded" and sum(x.billed_tokens for x in lines) == billed
    # a second process reuses the reference sample: only its query is paid for
    requests = fake_api.stats().requests_total
    with open_searcher(settings, method=FusionMethod.RRF) as searcher:
        rrf = searcher.search("house with a pool", k=5)
    assert fake_api.stats().requests_total == requests + 1 and rrf[0].method == "rrf"


def test_eval_reports_policies_with_costs_cis_json_and_a_chart(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    settings = _store(tmp_path, make_settings, fake_api)
    queries = tmp_path / "q.jsonl"
    qrels = tmp_path / "qrels.tsv"
    rows, judged = [], []
    for n, topic in enumerate(TOPICS):
        rows.append(json.dumps({"id": f"q{n}", "text": f"house with a {topic}"}))
        judged += [f"q{n}\t0\td{i:02d}\t1" for i in range(48) if i % len(TOPICS) == n]
    queries.write_text("\n".join(rows) + "\n")
    qrels.write_text("\n".join(judged) + "\n")
    opts = EvalOptions(queries, qrels, shares=(0.3,), embed_missing=True, max_cost_usd=0.01,
                       cache_dir=tmp_path / "cache", resamples=200)
    messages: list[str] = []
    report = evaluate_store(settings, opts, echo=messages.append)
    names = [r.name for r in report.rows]
    assert names[:4] == ["minilm-l6-v2 alone (as stored)", "fake-v1 alone (as stored)", "as stored, zscore",
                         "as stored, rrf"]
    assert {"all-local", "all-premium", "coverage @30%, zscore", "exclusive @30%, rrf"} <= set(names)
    rows_by = {r.name: r for r in report.rows}
    assert rows_by["all-premium"].cost_share == pytest.approx(1.0)
    assert 0.2 <= rows_by["coverage @30%, zscore"].cost_share <= 0.3
    cov = rows_by["coverage @30%, zscore"]
    assert cov.vs_local is not None and cov.vs_local["low"] <= cov.vs_local["diff"] <= cov.vs_local["high"]
    assert messages and "estimated at $" in messages[0]  # the cost is shown before anything is sent
    assert report.spent_usd > 0  # the missing premium documents and the queries were paid for
    assert any(r.run_id.startswith("eval-") for r in SpendLedger(settings.budget.ledger_path).runs())
    table = render_table(report)
    assert "coverage @30%, zscore" in table and "nDCG@10" in table
    assert json.loads(json.dumps(report.to_json()))["rows"][0]["means"]["nDCG@10"] >= 0
    chart = write_chart(report, tmp_path / "eval.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second eval is free: every vector it needs is cached
    spent = fake_api.stats().requests_total
    again = evaluate_store(settings, opts, echo=messages.append)
    assert fake_api.stats().requests_total == spent and again.spent_usd == 0
    assert [r.means for r in again.rows] == [r.means for r in report.rows]


def test_eval_refuses_to_spend_over_max_cost(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    settings = _store(tmp_path, make_settings, fake_api)
    (tmp_path / "q.jsonl").write_text(json.dumps({"id": "q", "text": "pool"}) + "\n")
    (tmp_path / "r.tsv").write_text("q\t0\td04\t1\n")
    requests = fake_api.stats().requests_total
    from tiering.errors import ConfigError

    with pytest.raises(ConfigError, match="--max-cost"):
        opts = EvalOptions(tmp_path / "q.jsonl", tmp_path / "r.tsv", embed_missing=True,
                           max_cost_usd=1e-9, cache_dir=tmp_path / "c")
        evaluate_store(settings, opts, echo=lambda m: None)
    assert fake_api.stats().requests_total == requests  # nothing was sent
