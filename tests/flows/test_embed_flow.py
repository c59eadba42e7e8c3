"""The embed-documents Prefect flow against a real (temporary) Prefect API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import corpus, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _config(tmp_path: Path, server: FakeOpenAIServer) -> Path:
    cfg = {
        "api": {"endpoint": "custom", "base_url": server.base_url, "api_key": "test",
                "models": [{"version": "fake-v1", "model": "fake", "price_per_million_tokens": 1.0}]},
        "routing": {"rules": [{"field": "priority", "equals": "high", "tier": "api"}], "api_threshold": 1.0,
                    "mode": "exclusive", "budget_decides": False},
        "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
        "dead_letters": {"dir": str(tmp_path / "dl")},
        "budget": {"ledger_path": str(tmp_path / "ledger.sqlite")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_flow_runs_pipeline_and_publishes_report_artifact(
    prefect_api: None, tmp_path: Path, fake_api: FakeOpenAIServer
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.embed import embed_documents

    docs = corpus(6)
    docs[0]["metadata"]["priority"] = "high"
    src = write_jsonl(tmp_path / "docs.jsonl", [*docs, "{bad json"])
    state = embed_documents(source=str(src), config_path=str(_config(tmp_path, fake_api)),
                            return_state=True)
    result = state.result()
    flow_run_id = state.state_details.flow_run_id

    assert result["accounting_ok"] is True
    assert result["records_read"] == 7 and result["dead_letters"] == {"validate": 1}
    tiers = {t["tier"]: t for t in result["tiers"]}
    assert tiers["api"]["documents"] == 1 and tiers["local"]["documents"] == 5
    assert tiers["api"]["billed_tokens"] == fake_api.stats().billed_tokens_total

    import asyncio

    async def artifacts() -> list:  # type: ignore[type-arg]
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tierembed-run-report"]),
                                               flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    found = asyncio.run(artifacts())
    assert len(found) == 1 and found[0].type == "table"  # this run's report, not another test's
    assert "fake-v1" in str(found[0].data)


def test_dry_run_checks_input_and_embeds_nothing(
    prefect_api: None, tmp_path: Path, fake_api: FakeOpenAIServer
) -> None:
    from flows.embed import embed_documents

    src = write_jsonl(tmp_path / "docs.jsonl", corpus(3))
    result = embed_documents(source=str(src), config_path=str(_config(tmp_path, fake_api)), dry_run=True)
    assert result["dry_run"] is True and result["files"] == [str(src)]
    assert fake_api.stats().requests_total == 0
    assert not (tmp_path / "store").exists()


def test_a_run_with_embedding_dead_letters_ends_in_a_failed_state_named_partial(
    prefect_api: None, tmp_path: Path
) -> None:
    from prefect.states import StateType

    from flows.embed import RunIncomplete, embed_documents

    docs = corpus(4)
    docs[0]["metadata"]["priority"] = "high"
    docs[1]["metadata"]["priority"] = "high"
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    # the API works, but its first request fails for good: one API target is dead-lettered
    # (an API that never worked fails the run outright: tests/flows/test_endpoint.py)
    with FakeOpenAIServer(FakeServerConfig(fail_next=(500,))) as flaky_api:
        state = embed_documents(
            source=str(src), config_path=str(_config(tmp_path, flaky_api)), return_state=True,
            settings_overrides={"api": {"retry": {"max_attempts": 1}, "preflight": False,
                                        "models": [{"version": "fake-v1", "model": "fake",
                                                    "price_per_million_tokens": 1.0,
                                                    "max_inputs_per_request": 1}],
                                        "breaker": {"on_open": "dead_letter", "failure_threshold": 5}}})
    assert state.type is StateType.FAILED and state.name == "Partial", state
    assert "1 of 4 targets dead-lettered by embed: 1" in (state.message or "")
    result = state.result(raise_on_failure=False)
    assert isinstance(result, RunIncomplete) and result.report["accounting_ok"] is True
    assert result.report["status"] == "partial" and result.report["written"] == 3
