from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tiering.errors import ConfigError
from tiering.settings import load_settings


def test_defaults_load_and_are_frozen() -> None:
    s = load_settings()
    assert s.sink.kind == "lancedb" and s.routing.mode == "coverage"
    with pytest.raises(ValidationError, match="frozen"):
        s.routing.api_threshold = 0.1  # type: ignore[misc]


def test_yaml_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("budget:\n  monthly_usd: 10\n  per_run_usd: 1\nrouting:\n  api_threshold: 0.2\n")
    monkeypatch.setenv("TIEREMBED_BUDGET__PER_RUN_USD", "2")
    monkeypatch.setenv("TIEREMBED_ROUTING__API_THRESHOLD", "0.4")
    s = load_settings(cfg, overrides={"routing": {"api_threshold": 0.9}})
    assert s.budget.monthly_usd == 10  # YAML
    assert s.budget.per_run_usd == 2  # environment beats YAML
    assert s.routing.api_threshold == 0.9  # per-run override beats environment


def test_bad_value_names_field_and_fix(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("routing:\n  api_threshold: 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    text = str(err.value)
    assert "routing.api_threshold" in text and "TIEREMBED_ROUTING__API_THRESHOLD" in text


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("routing:\n  api_treshold: 0.3\n")
    with pytest.raises(ConfigError, match="api_treshold"):
        load_settings(cfg)


def test_missing_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad)


def test_duplicate_versions_across_tiers_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unique"):
        load_settings(overrides={"api": {"models": [{"version": "minilm-l6-v2"}]}})


def test_openai_key_from_standard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    s = load_settings()
    assert s.api.api_key is not None and s.api.api_key.get_secret_value() == "sk-test"
    assert "sk-test" not in repr(s)


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"
    s = load_settings(example)
    assert s.input.max_text_chars > 0


def _missing_fields(model: type, data: object, path: str) -> list[str]:
    from pydantic import BaseModel

    missing: list[str] = []
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        where = f"{path}{name}"
        if not isinstance(data, dict) or name not in data:
            if name != "api_key" and not (isinstance(info.default, type(None)) and name.endswith("secret")):
                missing.append(where)
            continue
        ann = info.annotation
        inner = getattr(ann, "__args__", (ann,))[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            value = data[name]
            first = value[0] if isinstance(value, list) and value else value
            missing += _missing_fields(inner, first, where + ".")
    return missing


def test_example_config_lists_every_field() -> None:
    import yaml

    from tiering.settings import TierembedSettings

    example = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"
    data = yaml.safe_load(example.read_text())
    assert _missing_fields(TierembedSettings, data, "") == []
