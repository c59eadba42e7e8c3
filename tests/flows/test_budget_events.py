"""Budgets end to end: the real pipeline against the fault-injecting server's billing, the
spend ledger around runs, and the Prefect budget events.

Every pipeline test runs ``flows.embed.run_embedding`` (ReadDocuments ... PlanBudget ...
EmbedApi ... LanceDB) on a few listings, with an API price high enough that a few
documents exhaust the budget, and checks the *server's* bill, not our own counters.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore
from flows.budget_events import budget_event, emit_budget_events, settle_budget
from flows.embed import run_embedding
from flows.reporting import render_text
from store.ledger import SpendLedger
from tests.conftest import SettingsFactory, api_overrides, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer, count_tokens
from tiering.budget import BudgetLevel, BudgetStatus
from tiering.chunking import chunk_text, estimate_tokens
from tiering.classifier import load_default
from tiering.documents import Document
from tiering.report import RunReport
from tiering.settings import TierembedSettings

LISTINGS = Path(__file__).parents[2] / "examples" / "data" / "listings.jsonl"
PRICE = 1000.0  # USD per 1M tokens: $0.001 a token, so a listing costs $0.05 to $0.45
PER_TOKEN = PRICE / 1_000_000
MODEL = "text-embedding-3-small"


class Recorder:
    """An ``emit`` seam that keeps what would have gone to Prefect."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> None:
        self.events.append(kwargs)


def _listings(n: int) -> list[dict[str, Any]]:
    lines = LISTINGS.read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line) for line in lines]


def _settings(make_settings: SettingsFactory, server: FakeOpenAIServer, tmp_path: Path, name: str,
              **extra: Any) -> TierembedSettings:
    model = {"version": "fake-v1", "model": MODEL, "price_per_million_tokens": PRICE,
             **extra.pop("model", {})}
    overrides: dict[str, Any] = api_overrides(server, models=[model],
                                              retry={"base_delay_s": 0.01, "max_delay_s": 0.05})
    overrides["routing"] = {"api_threshold": 0.0, "mode": "exclusive"}  # every document wants the paid tier
    overrides["sink"] = {"lancedb": {"uri": str(tmp_path / f"store-{name}")}}
    overrides.update(extra)
    return make_settings(overrides)


def _billed_usd(server: FakeOpenAIServer) -> float:
    return server.stats().billed_tokens_by_model.get(MODEL, 0) * PER_TOKEN


def _api_ids(settings: TierembedSettings) -> set[str]:
    lc = settings.sink.lancedb
    store = LanceDBStore(LanceDBSinkConfig(lc.uri, lc.table_prefix))
    return set(store.existing_hashes("fake-v1"))


def _moved_by_the_spend_guard(settings: TierembedSettings) -> set[str]:
    """Documents the plan admitted to the paid tier that the runtime spend guard moved to
    the local tier (``fell_back`` rows of the local table)."""
    lc = settings.sink.lancedb
    store = LanceDBStore(LanceDBSinkConfig(lc.uri, lc.table_prefix))
    try:
        table = store.db.open_table(store.config.table_name("minilm-l6-v2"))
    except ValueError:  # "Table ... was not found": nothing went to the local tier
        return set()
    rows = table.search().select(["id", "fell_back"]).to_arrow().to_pydict()
    return {i for i, moved in zip(rows["id"], rows["fell_back"], strict=True) if moved}


def _run(settings: TierembedSettings, src: Path, budget: float | None, **kw: Any) -> RunReport:
    kw.setdefault("emit", Recorder())
    return run_embedding(settings, str(src), budget_usd=budget, full_refresh=True, **kw)


# ------------------------------------------------------------------ the estimate


def test_planning_estimate_never_undercounts_the_fake_servers_billing() -> None:
    # The plan uses estimate_tokens; the fake bills count_tokens. Chunking splits on
    # whitespace, so the chunks of a document are billed no more than the whole estimate.
    texts = [d["text"] for d in _listings(300)]
    texts += ["loan-to-value 60% @ 4.5%; EPC: B.", "x" * 5000, "Ünïcødé — 東京 120 m²!"]
    for text in texts:
        estimate = estimate_tokens(text)
        assert count_tokens(text) <= estimate
        assert sum(count_tokens(c) for c in chunk_text(text, 32)) <= estimate


# ----------------------------------------------------------- budgets, end to end


@pytest.mark.parametrize(
    ("budget", "model", "faults"),
    [
        (0.6, {}, {}),
        (1.1, {"max_tokens_per_input": 40}, {}),  # API-side chunking: many small inputs
        (0.9, {}, {"error_rate": 0.3, "seed": 3}),  # 5xx faults: retries must not re-bill
    ],
    ids=["plain", "chunked", "faults"],
)
def test_billed_spend_never_exceeds_the_budget(
    make_settings: SettingsFactory, fake_api: FakeOpenAIServer, tmp_path: Path,
    budget: float, model: dict[str, Any], faults: dict[str, Any],
) -> None:
    fake_api.configure(**faults)
    src = write_jsonl(tmp_path / "docs.jsonl", _listings(20))
    settings = _settings(make_settings, fake_api, tmp_path, "b", model=model)
    report = _run(settings, src, budget)

    billed = _billed_usd(fake_api)
    wanted_total = sum(estimate_tokens(d["text"]) for d in _listings(20)) * PER_TOKEN
    assert wanted_total > 1.5 * budget  # the budget binds
    assert 0 < billed <= budget
    assert report.over_budget > 0 and report.accounting_ok()
    assert report.cost_usd == pytest.approx(billed)  # our report agrees with the server's bill
    assert report.est_cost_usd <= budget
    if faults:
        assert fake_api.stats().injected_faults["error"] > 0


def test_zero_budget_sends_nothing_to_the_paid_tier(
    make_settings: SettingsFactory, fake_api: FakeOpenAIServer, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", _listings(12))
    settings = _settings(make_settings, fake_api, tmp_path, "zero")
    report = _run(settings, src, 0.0)
    assert fake_api.stats().requests_total == 0
    assert report.cost_usd == 0 and report.over_budget == 12 and report.api_documents_planned == 0
    assert report.written == 12 and _api_ids(settings) == set()


def _equal_cost_docs(n: int) -> list[dict[str, Any]]:
    """Documents of exactly 40 estimated tokens each (forty 5-letter words) whose scores
    differ: more domain words (yield, lease, ...) score higher."""
    domain = ["yield", "lease", "bonds", "zoned", "rents", "taxes", "loans", "asset", "deeds", "capex"]
    common = ["about", "house", "light", "place", "early", "month", "offer", "ready", "large", "close"]
    docs = []
    for i in range(n):
        words = [domain[(i + j) % 10] for j in range(i % 11)] + [common[(i + j) % 10] for j in range(40)]
        docs.append({"id": f"eq-{i:02d}", "text": " ".join(words[:40])})
    return docs


def test_raising_the_budget_moves_the_highest_scored_documents_first(
    make_settings: SettingsFactory, fake_api: FakeOpenAIServer, tmp_path: Path
) -> None:
    docs = _equal_cost_docs(16)
    assert {estimate_tokens(d["text"]) for d in docs} == {40}  # $0.04 each
    clf = load_default()
    score = {d["id"]: clf.score(Document(d["id"], d["text"], "t")) for d in docs}
    assert len(set(score.values())) > 5
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    fake_api.configure(token_count="estimate")  # bills our estimate: $0.04 a document
    previous: set[str] = set()
    for n, budget in enumerate((0.0, 0.09, 0.21, 0.45, 10.0)):
        settings = _settings(make_settings, fake_api, tmp_path, f"raise-{n}")
        before = _billed_usd(fake_api)
        report = _run(settings, src, budget)
        paid, guarded = _api_ids(settings), _moved_by_the_spend_guard(settings)
        planned = paid | guarded
        assert len(planned) == report.api_documents_planned == min(16, int(budget / 0.04 + 1e-9))
        assert previous <= planned  # raising the budget only adds documents
        rest = set(score) - planned
        if planned and rest:
            assert min(score[i] for i in planned) >= max(score[i] for i in rest)
        # The spend guard reserves an upper bound of each request (its UTF-8 bytes, ~6x the
        # estimate here): it holds the budget, and leaves unsent only what could not fit.
        assert len(guarded) == report.fell_back_budget
        assert _billed_usd(fake_api) - before <= budget
        previous = planned
    assert previous == set(score) == paid


# --------------------------------------------------------------- ledger and runs


def test_runs_record_billed_spend_and_the_monthly_cap_binds_the_next_run(
    make_settings: SettingsFactory, fake_api: FakeOpenAIServer, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", _listings(10))
    settings = _settings(make_settings, fake_api, tmp_path, "month",
                         budget={"ledger_path": str(tmp_path / "ledger.sqlite"), "monthly_usd": 1.0,
                                 "per_run_usd": 0.7})
    first = _run(settings, src, None)
    after_first = _billed_usd(fake_api)
    assert 0 < after_first <= 0.7 and first.budget_usd == 0.7

    events = Recorder()
    second = _run(settings, src, None, emit=events)
    assert second.month_to_date_usd == pytest.approx(after_first)
    assert second.budget_usd == pytest.approx(1.0 - after_first)
    total = _billed_usd(fake_api)
    assert total <= 1.0

    ledger = SpendLedger(settings.budget.ledger_path)
    assert ledger.month_to_date() == pytest.approx(total)  # the ledger matches the server's bill
    runs = {r.run_id: r for r in ledger.runs()}
    assert runs[first.run_id].cost_usd == pytest.approx(after_first)
    assert {r.status for r in runs.values()} == {"succeeded"}
    month_events = [e for e in events.events if e["payload"]["scope"] == "month"]
    assert month_events and month_events[0]["event"] == "tierembed.budget.exceeded"
    assert month_events[0]["payload"]["limit_usd"] == 1.0
    assert month_events[0]["payload"]["spend_usd"] == pytest.approx(total)


def test_two_concurrent_runs_share_the_monthly_cap(
    make_settings: SettingsFactory, fake_api: FakeOpenAIServer, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", _listings(10))
    budget = {"ledger_path": str(tmp_path / "ledger.sqlite"), "monthly_usd": 0.8, "per_run_usd": 0.5}
    settings = [_settings(make_settings, fake_api, tmp_path, f"c{i}", budget=budget) for i in range(2)]
    reports: list[RunReport] = []
    errors: list[BaseException] = []

    def go(s: TierembedSettings) -> None:
        try:
            reports.append(_run(s, src, None))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in settings]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(r.budget_usd or 0 for r in reports) == pytest.approx([0.3, 0.5])
    assert _billed_usd(fake_api) <= 0.8
    assert SpendLedger(budget["ledger_path"]).month_to_date() == pytest.approx(_billed_usd(fake_api))


def test_failed_run_keeps_its_reservation_charged(
    make_settings: SettingsFactory, fake_api: FakeOpenAIServer, tmp_path: Path
) -> None:
    from tiering.errors import InputNotFoundError

    settings = _settings(make_settings, fake_api, tmp_path, "fail",
                         budget={"ledger_path": str(tmp_path / "ledger.sqlite"), "monthly_usd": 5.0})
    with pytest.raises(InputNotFoundError):
        _run(settings, tmp_path / "missing.jsonl", 2.0)
    spend = SpendLedger(settings.budget.ledger_path).month_spend()
    assert spend.failed == 1 and spend.unreconciled_usd == 0  # nothing could have been sent


def test_run_report_prints_the_plan_costs_and_budget_left(
    make_settings: SettingsFactory, fake_api: FakeOpenAIServer, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", _listings(8))
    settings = _settings(make_settings, fake_api, tmp_path, "print",
                         budget={"ledger_path": str(tmp_path / "ledger.sqlite"), "monthly_usd": 50.0})
    events = Recorder()
    report = _run(settings, src, 0.5, emit=events)
    text = render_text(report)
    assert f"plan: 8 documents wanted the paid tier; {report.api_documents_planned} admitted" in text
    assert f"{report.over_budget} moved to the local tier by the budget" in text
    assert "this run $0.500000, left $" in text and "of $50.000000, left $" in text
    api_line = next(line for line in text.splitlines() if line.strip().startswith("api"))
    assert f"${report.cost_usd:,.6f}" in api_line and f"${report.est_cost_usd:,.6f}" in api_line
    assert report.run_left_usd == pytest.approx(0.5 - report.cost_usd)
    # The run budget bound: an `exceeded` event with spend and limit, noted in the report.
    (event,) = events.events
    assert event["event"] == "tierembed.budget.exceeded"
    assert event["payload"]["spend_usd"] == pytest.approx(report.cost_usd)
    assert event["payload"]["limit_usd"] == 0.5 and event["payload"]["run_id"] == report.run_id
    assert any(n.startswith("budget exceeded (run)") for n in report.notes)
    assert report.to_dict()["run_left_usd"] == pytest.approx(report.run_left_usd)


# ------------------------------------------------------------------------ events


def _status(**kw: Any) -> BudgetStatus:
    base: dict[str, Any] = dict(month="2026-01", run_spend_usd=0.9, run_est_usd=1.0, run_limit_usd=1.0,
                                per_run_cap_usd=1.0, month_to_date_usd=9.0, monthly_limit_usd=10.0,
                                warn_fraction=0.8, documents_over_budget=3)
    base.update(kw)
    return BudgetStatus(**base)


def test_each_alert_becomes_one_prefect_event_with_spend_and_limit() -> None:
    rec = Recorder()
    alerts = emit_budget_events(_status(), run_id="run-7", emit=rec)
    assert [(a.scope, a.level) for a in alerts] == [("run", BudgetLevel.EXCEEDED),
                                                   ("month", BudgetLevel.WARNING)]
    assert [e["event"] for e in rec.events] == ["tierembed.budget.exceeded", "tierembed.budget.warning"]
    run_event, month_event = rec.events
    assert run_event["resource"]["prefect.resource.id"] == "tierembed.budget.run"
    assert run_event["payload"] | {"message": ""} == {
        "scope": "run", "level": "exceeded", "spend_usd": 0.9, "limit_usd": 1.0,
        "left_usd": pytest.approx(0.1), "fraction": pytest.approx(0.9), "warn_fraction": 0.8,
        "documents_over_budget": 3, "run_id": "run-7", "month": "2026-01", "message": ""}
    assert month_event["payload"]["spend_usd"] == 9.0 and month_event["payload"]["limit_usd"] == 10.0
    assert month_event["related"] == [{"prefect.resource.id": "tierembed.run.run-7",
                                       "prefect.resource.role": "run"}]


def test_events_are_valid_prefect_events() -> None:
    from prefect.events import Event

    for alert in _status().alerts():
        event = Event(**budget_event(alert, run_id="r", month="2026-01"))
        assert event.resource.id.startswith("tierembed.budget.") and event.payload["limit_usd"] > 0


def test_no_alert_no_event() -> None:
    rec = Recorder()
    assert emit_budget_events(_status(run_spend_usd=0.1, month_to_date_usd=1.0, documents_over_budget=0),
                              run_id="r", emit=rec) == ()
    assert rec.events == []


def test_default_emitter_outside_prefect_only_logs(caplog: pytest.LogCaptureFixture) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        alerts = emit_budget_events(_status(), run_id="r")
    assert len(alerts) == 2
    assert "budget exceeded (run)" in caplog.text


def test_a_failing_emitter_does_not_fail_the_run(tmp_path: Path, make_settings: SettingsFactory) -> None:
    from tiering.report import build_report

    def broken(**_: Any) -> None:
        raise ConnectionError("prefect is down")

    settings = make_settings({"budget": {"ledger_path": str(tmp_path / "l.sqlite")}})
    ledger = SpendLedger(settings.budget.ledger_path)
    grant = ledger.begin_run("r1", per_run_usd=0.0, monthly_usd=None)
    report = build_report(run_id="r1", source="s", counters={"routed_over_budget": 2}, local_models={},
                          api_models={}, dead_letter_path="", budget_usd=grant.budget_usd)
    settled, status = settle_budget(report, ledger, settings.budget, per_run_cap_usd=0.0,
                                    month=grant.month, emit=broken)
    assert status.alerts()[0].level is BudgetLevel.EXCEEDED
    assert any("budget exceeded" in n for n in settled.notes)
    assert ledger.run("r1").status == "succeeded"  # type: ignore[union-attr]


# ------------------------------------------------------------ a real Prefect API


@pytest.mark.slow  # starts a temporary Prefect server (about 10 s) and runs the flow
def test_flow_emits_budget_event_that_reaches_the_prefect_server(
    tmp_path: Path, fake_api: FakeOpenAIServer
) -> None:
    import asyncio
    import time

    import yaml
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.testing.utilities import prefect_test_harness

    from flows.embed import embed_documents

    cfg = {
        "api": {"endpoint": "custom", "base_url": fake_api.base_url, "api_key": "test",
                "models": [{"version": "fake-v1", "model": MODEL, "price_per_million_tokens": PRICE}]},
        "routing": {"api_threshold": 0.0, "mode": "exclusive"},
        "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
        "dead_letters": {"dir": str(tmp_path / "dl")},
        "budget": {"ledger_path": str(tmp_path / "ledger.sqlite"), "monthly_usd": 5.0},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    src = write_jsonl(tmp_path / "docs.jsonl", _listings(6))

    async def budget_events() -> list[Any]:
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(event=EventNameFilter(prefix=["tierembed.budget."])), limit=50)
            return list(page.events)

    with prefect_test_harness(server_startup_timeout=120):
        result = embed_documents(source=str(src), config_path=str(config), budget_usd=0.3)
        deadline, found = time.monotonic() + 15, []
        while not found and time.monotonic() < deadline:
            found = asyncio.run(budget_events())
            time.sleep(0.2)
    assert result["over_budget"] > 0 and fake_api.stats().billed_tokens_total * PER_TOKEN <= 0.3
    (event,) = found
    assert event.event == "tierembed.budget.exceeded"
    assert event.resource.id == "tierembed.budget.run"
    assert event.payload["limit_usd"] == 0.3
    assert event.payload["spend_usd"] == pytest.approx(result["cost_usd"])
    assert event.payload["run_id"] == result["run_id"]
