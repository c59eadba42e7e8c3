"""Shared fixtures: isolated settings per test, sample corpora, the fake OpenAI server."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig  # noqa: E402
from tiering.settings import TierembedSettings, load_settings  # noqa: E402

SettingsFactory = Callable[..., TierembedSettings]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(autouse=True)
def _own_result_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own API result cache (the default path is relative to the working
    directory and would carry paid vectors from one test into the next, CLI children too)."""
    monkeypatch.setenv("TIEREMBED_API__RESULT_CACHE__PATH", str(tmp_path / "api_results.sqlite"))


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings whose store, dead letters and ledger live under tmp_path."""

    def _make(overrides: dict[str, Any] | None = None) -> TierembedSettings:
        base = {
            "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
            "dead_letters": {"dir": str(tmp_path / "dead_letters")},
            "budget": {"ledger_path": str(tmp_path / "ledger.sqlite")},
        }
        return load_settings(overrides=_merge(base, overrides or {}))

    return _make


@pytest.fixture
def fake_api() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(FakeServerConfig()) as server:
        yield server


def api_overrides(server: FakeOpenAIServer, **api: Any) -> dict[str, Any]:
    """Settings overrides pointing the API tier at ``server``."""
    return {"api": {"endpoint": "custom", "base_url": server.base_url, "api_key": "test", **api}}


def write_jsonl(path: Path, records: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


LISTING = ("Bright {n} bedroom house with a private garden, renovated kitchen and garage, "
           "close to schools and the station. Asking price {p} EUR, {a} square metres.")
ANALYSIS = ("Rental yield analysis for district {n}: gross yields of {p} percent, vacancy at "
            "{a} percent, zoning ordinance changes and mortgage stress tests at 7 percent; cap "
            "rates compress by 25 bps as the EPC regulation tightens retrofit requirements.")


def corpus(n_docs: int, *, long_every: int = 0) -> list[dict[str, Any]]:
    """A small mixed corpus: short listings and denser analyses; some long ones if asked."""
    docs: list[dict[str, Any]] = []
    for i in range(n_docs):
        template = ANALYSIS if i % 3 == 0 else LISTING
        text = template.format(n=i % 6 + 1, p=100_000 + 1000 * i, a=50 + i)
        if long_every and i % long_every == 0:
            text = " ".join([text] * 25)
        docs.append({"id": f"doc-{i:03d}", "text": text, "metadata": {"kind": "test", "n": i}})
    return docs


def require_binary(name: str, hint: str) -> str:
    """Path of a system tool a test needs. Missing: skip on a laptop, FAIL in CI (where
    scripts/test.sh installs it), so a broken setup can never turn into a green run."""
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed; install it with `{hint}`"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run this test)")
        pytest.skip(message)
    return path
