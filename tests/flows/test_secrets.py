"""The API key from a Prefect Secret block (flows/secrets.py).

Fast tests inject the secret loader; the slow ones save real Secret blocks to a temporary
Prefect API and run the flow's dry run, which loads the block before anything else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from flows.secrets import SecretLoader, load_prefect_secret, resolve_api_key
from tests.conftest import SettingsFactory, corpus, write_jsonl
from tiering.errors import ConfigError
from tiering.settings import load_settings

KEY = "sk-test-0123456789abcdef"


def _loader(values: dict[str, str]) -> tuple[list[str], SecretLoader]:
    calls: list[str] = []

    def load(name: str) -> str:
        calls.append(name)
        return values[name]

    return calls, load


def test_without_a_secret_block_settings_pass_through_and_nothing_is_loaded(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings({"api": {"api_key": "from-yaml"}})
    calls, load = _loader({})
    assert resolve_api_key(settings, load_secret=load) is settings
    assert calls == []


def test_secret_block_key_becomes_api_key_and_wins_over_yaml_and_env(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    settings = make_settings({"api": {"api_key": "from-yaml", "api_key_secret_block": "openai-key"}})
    calls, load = _loader({"openai-key": KEY})
    resolved = resolve_api_key(settings, load_secret=load)
    assert calls == ["openai-key"]
    assert isinstance(resolved.api.api_key, SecretStr)
    assert resolved.api.api_key.get_secret_value() == KEY
    # Everything else is unchanged, and the key never shows in a repr or a dump.
    assert resolved.api.model_dump(exclude={"api_key"}) == settings.api.model_dump(exclude={"api_key"})
    assert resolved.budget == settings.budget and resolved.sink == settings.sink
    assert KEY not in repr(resolved) and KEY not in resolved.model_dump_json()


def test_secret_block_key_is_stripped_of_surrounding_whitespace(make_settings: SettingsFactory) -> None:
    settings = make_settings({"api": {"api_key_secret_block": "openai-key"}})
    _, load = _loader({"openai-key": f"  {KEY}\n"})
    resolved = resolve_api_key(settings, load_secret=load)
    assert resolved.api.api_key is not None and resolved.api.api_key.get_secret_value() == KEY


def test_empty_secret_block_is_a_config_error_naming_the_block(make_settings: SettingsFactory) -> None:
    settings = make_settings({"api": {"api_key_secret_block": "openai-key"}})
    _, load = _loader({"openai-key": "  \n"})
    with pytest.raises(ConfigError, match="'openai-key' is empty"):
        resolve_api_key(settings, load_secret=load)


def test_resolving_logs_the_block_name_but_never_the_key(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings({"api": {"api_key_secret_block": "openai-key"}})
    _, load = _loader({"openai-key": KEY})
    with caplog.at_level(logging.DEBUG):
        resolve_api_key(settings, load_secret=load)
    assert "openai-key" in caplog.text and KEY not in caplog.text


def test_secret_block_name_comes_from_per_run_overrides(make_settings: SettingsFactory) -> None:
    overridden = make_settings({"api": {"api_key_secret_block": "per-run-block"}})
    assert overridden.api.api_key_secret_block == "per-run-block"


def test_secret_block_name_comes_from_the_environment(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIEREMBED_API__API_KEY_SECRET_BLOCK", "from-env-block")
    assert make_settings().api.api_key_secret_block == "from-env-block"


@pytest.mark.parametrize("name", ["OpenAI_Key", "openai key", "openai/key", ""])
def test_secret_block_name_outside_prefects_rules_is_rejected_at_load(name: str) -> None:
    with pytest.raises(ConfigError, match="api.api_key_secret_block"):
        load_settings(overrides={"api": {"api_key_secret_block": name}})


# --- against a real (temporary) Prefect API ----------------------------------------------


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _save(name: str, value: object) -> None:
    from prefect.blocks.system import Secret

    Secret(value=value).save(name, overwrite=True)  # type: ignore[arg-type]


@pytest.mark.slow
def test_load_prefect_secret_returns_the_saved_string(prefect_api: None) -> None:
    _save("tierembed-test-key", KEY)
    assert load_prefect_secret("tierembed-test-key") == KEY


@pytest.mark.slow
def test_load_prefect_secret_keeps_a_key_that_parses_as_json_a_string(prefect_api: None) -> None:
    # Secret.get() JSON-decodes its value: "0123456789" would come back as the int 123456789.
    _save("tierembed-digits-key", "0123456789")
    assert load_prefect_secret("tierembed-digits-key") == "0123456789"


@pytest.mark.slow
def test_load_prefect_secret_rejects_a_non_string_value(prefect_api: None) -> None:
    _save("tierembed-dict-key", {"user": "u", "password": KEY})
    with pytest.raises(ConfigError, match="holds a dict, not a string") as raised:
        load_prefect_secret("tierembed-dict-key")
    assert KEY not in str(raised.value)


@pytest.mark.slow
def test_missing_secret_block_fails_the_flow_before_any_work(prefect_api: None, tmp_path: Path) -> None:
    from flows.embed import embed_documents

    src = write_jsonl(tmp_path / "docs.jsonl", corpus(2))
    with pytest.raises(ConfigError, match="no Secret block of that name.*'tierembed-missing'"):
        embed_documents(
            source=str(src),
            dry_run=True,
            settings_overrides={"api": {"api_key_secret_block": "tierembed-missing"}},
        )


@pytest.mark.slow
def test_flow_dry_run_loads_the_secret_block_named_in_the_settings(
    prefect_api: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.embed import embed_documents

    _save("tierembed-flow-key", KEY)
    src = write_jsonl(tmp_path / "docs.jsonl", corpus(2))
    with caplog.at_level(logging.INFO):
        result = embed_documents(
            source=str(src),
            dry_run=True,
            settings_overrides={"api": {"api_key_secret_block": "tierembed-flow-key"}},
        )
    assert result == {"dry_run": True, "files": [str(src)]}
    assert "tierembed-flow-key" in caplog.text and KEY not in caplog.text
