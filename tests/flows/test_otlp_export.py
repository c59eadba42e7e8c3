"""Flow-side telemetry: real OTLP/HTTP exports of a run, decoded, against its bill; the
progress artifact."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import yaml

from beam_pipeline.progress import ProgressRecorder
from beam_pipeline.telemetry import DURATION_BUCKETS, TOKEN_BUCKETS, shutdown_telemetry
from flows.embed import run_embedding
from flows.telemetry_flow import PROGRESS_KEY, ProgressArtifact
from tests.conftest import SettingsFactory, api_overrides, corpus, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.otlp_receiver import CUMULATIVE, OtlpReceiver

PRICE = 2.0  # USD per 1M tokens
MONTHLY = 1.0


@pytest.fixture(autouse=True)
def _no_process_telemetry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    yield
    shutdown_telemetry()


def _settings(make_settings: SettingsFactory, server: FakeOpenAIServer, telemetry: dict[str, Any],
              **api: Any) -> Any:
    overrides = api_overrides(server, models=[{"version": "fake-v1", "model": "fake-embed",
                                               "price_per_million_tokens": PRICE}], **api)
    overrides.update({
        "routing": {"rules": [{"field": "priority", "equals": "high", "tier": "api"}], "api_threshold": 1.0,
                    "mode": "exclusive", "budget_decides": False},
        "budget": {"monthly_usd": MONTHLY},
        "telemetry": telemetry,
    })
    return make_settings(overrides)


def _source(tmp_path: Path, n_api: int) -> Path:
    docs = corpus(6)
    for d in docs[:n_api]:
        d["metadata"]["priority"] = "high"
    return write_jsonl(tmp_path / "docs.jsonl", [*docs, "{not json"])


def test_otlp_export_of_a_run_matches_its_billed_cost(
    make_settings: SettingsFactory, fake_api: FakeOpenAIServer, tmp_path: Path
) -> None:
    with OtlpReceiver() as rx:
        telemetry = {"exporter": "otlp", "otlp_endpoint": rx.url, "export_interval_s": 3600,
                     "progress_dir": str(tmp_path / "progress")}
        settings = _settings(make_settings, fake_api, telemetry)
        report = run_embedding(settings, str(_source(tmp_path, n_api=3)), emit=lambda **_: None)
        shutdown_telemetry()  # the final export, as at process exit
        assert rx.rejected == 0

    billed = fake_api.stats().billed_tokens_total  # what the server billed: the independent truth
    api_line = next(line for line in report.lines if line.tier == "api")
    local_line = next(line for line in report.lines if line.tier == "local")
    assert billed > 0 and api_line.billed_tokens == billed and api_line.documents == 3

    cost = rx.latest("embedding.cost", tier="api")
    assert (cost.unit, cost.kind, cost.monotonic, cost.temporality) == ("USD", "sum", True, CUMULATIVE)
    assert cost.attributes == {"tier": "api", "model_version": "fake-v1", "provider": "openai-compatible"}
    assert cost.value == pytest.approx(billed * PRICE / 1e6, rel=1e-9)
    assert cost.value == pytest.approx(report.cost_usd, rel=1e-9)
    assert rx.points("embedding.cost", tier="api")[0].value == 0  # seeded before the first spend
    assert rx.latest("embedding.cost", tier="local").value == 0

    tokens = rx.latest("tierembed.tokens", tier="api", kind="billed")
    assert tokens.unit == "{token}" and tokens.value == billed
    assert rx.latest("tierembed.tokens", tier="api", kind="estimated").value == api_line.est_tokens
    assert rx.latest("tierembed.tokens", tier="local", kind="estimated").value == local_line.est_tokens

    def docs(tier: str, outcome: str) -> float:
        return rx.latest("tierembed.documents", tier=tier, outcome=outcome).value

    assert docs("api", "embedded") == 3 and docs("local", "embedded") == local_line.documents == 3
    assert docs("none", "dead_lettered") == 1 and docs("api", "dead_lettered") == 0

    requests = rx.latest("tierembed.api.requests", status="200")
    assert requests.attributes == {"provider": "openai-compatible", "model": "fake-embed", "status": "200"}
    assert requests.value == fake_api.stats().responses_by_status[200]
    assert rx.latest("tierembed.api.retries").value == 0
    assert rx.latest("tierembed.api.breaker.state").value == 0

    limit = rx.latest("tierembed.budget.limit", period="month")
    spend = rx.latest("tierembed.budget.spend", period="month")
    assert (limit.unit, limit.kind, limit.value) == ("USD", "gauge", MONTHLY)
    assert spend.value == pytest.approx(report.month_to_date_after_usd, rel=1e-9)
    assert rx.latest("tierembed.budget.limit", period="run").value == pytest.approx(report.budget_usd)
    assert rx.latest("tierembed.budget.spend", period="run").value == pytest.approx(report.cost_usd)

    genai = {"gen_ai.operation.name": "embeddings", "gen_ai.provider.name": "openai-compatible",
             "gen_ai.request.model": "fake-embed"}
    usage = rx.latest("gen_ai.client.token.usage", **genai, **{"gen_ai.token.type": "input"})
    assert usage.kind == "histogram" and usage.unit == "{token}" and usage.temporality == CUMULATIVE
    assert usage.sum == billed and usage.explicit_bounds == tuple(float(b) for b in TOKEN_BUCKETS)
    duration = rx.latest("gen_ai.client.operation.duration", **genai)
    assert duration.unit == "s" and duration.explicit_bounds == DURATION_BUCKETS
    assert duration.count == fake_api.stats().requests_total

    assert cost.resource["service.name"] == "tierembed" and cost.scope == "tierembed"
    assert len({p.resource["service.instance.id"] for p in rx.points()}) == 1  # one process here


def test_documents_that_fall_back_are_counted_and_the_breaker_gauge_resets(
    make_settings: SettingsFactory, fake_api: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_api.configure(dead=True)  # every request 503
    # One 4-token document per batch (max 5 tokens a request): the first request fails and
    # opens the breaker (threshold 1, no retries), so the later batches fall back to local.
    texts = ["alpha beta gamma delta", "north south east west", "red green blue black"]
    docs = [{"id": f"api-{i}", "text": t, "metadata": {"priority": "high"}} for i, t in enumerate(texts)]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    with OtlpReceiver() as rx:
        settings = make_settings({
            **api_overrides(fake_api, models=[{"version": "fake-v1", "model": "fake-embed",
                                               "price_per_million_tokens": PRICE,
                                               "max_tokens_per_request": 5}],
                            tokens_per_minute=10, max_request_share=1.0, retry={"max_attempts": 1},
                            # documents go to local as soon as the breaker is open
                            breaker={"failure_threshold": 1, "reset_after_s": 60, "max_wait_s": 0}),
            "routing": {"rules": [{"field": "priority", "equals": "high", "tier": "api"}],
                        "mode": "exclusive"},
            "telemetry": {"exporter": "otlp", "otlp_endpoint": rx.url, "export_interval_s": 3600},
        })
        report = run_embedding(settings, str(src), emit=lambda **_: None)
        shutdown_telemetry()
    assert report.cost_usd == 0
    assert rx.latest("tierembed.documents", tier="api", outcome="dead_lettered").value == 1
    assert rx.latest("tierembed.documents", tier="local", outcome="fell_back").value == 2
    assert rx.latest("tierembed.documents", tier="local", outcome="embedded").value == 0  # exclusive
    assert rx.latest("tierembed.api.requests", status="503").value == 1
    states = [p.value for p in rx.points("tierembed.api.breaker.state")]
    assert 2 in states and states[-1] == 0  # open during the run, back to 0 once it is over


# ------------------------------------------------------------------ progress artifact


class _Artifacts:
    def __init__(self) -> None:
        self.created: list[tuple[float, str, str]] = []
        self.updates: list[tuple[float, str]] = []

    def create(self, progress: float, key: str, description: str) -> UUID:
        self.created.append((progress, key, description))
        return uuid4()

    def update(self, artifact_id: UUID, progress: float, description: str) -> None:
        self.updates.append((progress, description))


def test_progress_artifact_follows_the_workers_files_and_completes(tmp_path: Path) -> None:
    arts = _Artifacts()
    run_dir = str(tmp_path / "run-1")
    artifact = ProgressArtifact("run-1", run_dir, "unused", interval_s=3600, create=arts.create,
                                update=arts.update, count=lambda source, fmt: 10)
    artifact.start()
    assert arts.created == [(0.0, PROGRESS_KEY, "run run-1: starting")]
    artifact._total = 10  # what the polling thread counts first (it waits an hour here)
    worker = ProgressRecorder(run_dir)
    worker.add(written=3, dead_lettered=1)
    assert artifact.poll() == pytest.approx(40.0)
    worker.add(written=20)  # coverage mode or chunk re-writes can pass the record count
    worker.close()
    assert artifact.poll() == 99.0  # never 100 before the run says it is done
    artifact.stop(complete=True, note="done")
    assert arts.updates[-1] == (100.0, "run run-1: done")
    assert "3 written, 1 dead-lettered of about 10 input records" in arts.updates[0][1]


def test_progress_artifact_keeps_its_figure_when_the_run_fails(tmp_path: Path) -> None:
    arts = _Artifacts()
    artifact = ProgressArtifact("run-2", str(tmp_path / "run-2"), "unused", interval_s=3600,
                                create=arts.create, update=arts.update, count=lambda s, f: 4)
    artifact.start()
    artifact._total = 4
    ProgressRecorder(str(tmp_path / "run-2")).add(written=1)
    artifact.poll()
    artifact.stop(complete=False, note="failed: RuntimeError: boom")
    assert arts.updates[-1] == (25.0, "run run-2: failed: RuntimeError: boom")


@pytest.mark.slow
def test_flow_run_publishes_a_completed_progress_artifact(
    tmp_path: Path, fake_api: FakeOpenAIServer
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.testing.utilities import prefect_test_harness

    from flows.embed import embed_documents

    cfg = {
        "api": {"endpoint": "custom", "base_url": fake_api.base_url, "api_key": "test",
                "models": [{"version": "fake-v1", "model": "fake", "price_per_million_tokens": 1.0}]},
        "routing": {"api_threshold": 1.0,
                    "mode": "exclusive", "budget_decides": False},
        "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
        "dead_letters": {"dir": str(tmp_path / "dl")},
        "budget": {"ledger_path": str(tmp_path / "ledger.sqlite")},
        "telemetry": {"progress_dir": str(tmp_path / "progress")},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(4))

    async def progress_artifacts() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[PROGRESS_KEY])))

    with prefect_test_harness(server_startup_timeout=120):
        result = embed_documents(source=str(src), config_path=str(config))
        found = asyncio.run(progress_artifacts())
    assert result["written"] == 4
    assert found and found[0].type == "progress" and found[0].data == 100.0
    assert "4 written, 0 dead-lettered, 0 skipped unchanged" in (found[0].description or "")
    assert not (tmp_path / "progress" / "tierembed-progress" / result["run_id"]).exists()
