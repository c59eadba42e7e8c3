"""End to end: a real run exhausts a tiny monthly budget and the alert reaches a webhook.

The chain under test is the production one, on loopback: the run's OpenTelemetry
instruments -> the SDK's Prometheus exporter -> Pushgateway (Debian's
``prometheus-pushgateway``) -> Prometheus (Debian's ``prometheus``, scraping it with
``honor_labels``, evaluating the real ``deployments/alerts/tierembed-rules.yml``) ->
Alertmanager (Debian's ``prometheus-alertmanager``, with the real
``deployments/alerts/alertmanager.yml``, its placeholder webhook URLs pointed at an in-test
receiver). Scrape and evaluation run every second. Every server is started on a free port
with its own temp data folder and stopped by its pid.

The budget: the API tier's price is 2^-20 USD a token and the monthly limit 8 tokens' worth,
so two 4-word documents (the fake server bills one token a word, exactly our estimate) use
it up to the last bit and the third that wanted the API goes to the local tier.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from beam_pipeline.telemetry import shutdown_telemetry
from flows.embed import run_embedding
from tests.conftest import SettingsFactory, api_overrides, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.webhook_receiver import WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deployments" / "alerts"
AUTOMATION = ROOT / "deployments" / "automations" / "budget-exceeded.yaml"
BINARIES = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager",
            "pushgateway": "prometheus-pushgateway"}
PRICE_PER_MILLION = 0.95367431640625  # exactly 2**-20 USD a token, so sums are exact
MONTHLY_USD = 8 * 2**-20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - loopback only
        return bytes(reply.read())


@dataclass
class _Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _start(name: str, argv: list[str], url: str, workdir: Path) -> _Server:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    server = _Server(name, proc, url, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            _get(url + "/-/ready")
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{name} did not become ready at {url}; its log:\n{log.read_text()[-3000:]}")


@dataclass
class AlertingStack:
    pushgateway: str
    prometheus: str
    alertmanager: str
    webhook: WebhookReceiver

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        return list(json.loads(_get(url))["data"]["result"])


def _alertmanager_config(webhook_url: str, path: Path) -> Path:
    text = (ALERTS / "alertmanager.yml").read_text()
    assert "http://127.0.0.1:9095/alerts" in text, "the placeholder webhook URL moved: update this test"
    path.write_text(text.replace("http://127.0.0.1:9095/alerts", webhook_url))
    return path


def _prometheus_config(pushgateway: str, alertmanager: str, path: Path) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS / "tierembed-rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": "pushgateway", "honor_labels": True,
                            "static_configs": [{"targets": [pushgateway]}]}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _wait_until_scraping(stack: AlertingStack, timeout_s: float = 15.0) -> None:
    """Prometheus has scraped Pushgateway once: from now on no pushed value goes unseen for
    longer than a scrape interval."""
    deadline = time.monotonic() + timeout_s
    while not stack.query('up{job="pushgateway"} == 1'):
        if time.monotonic() > deadline:
            raise RuntimeError("Prometheus did not scrape Pushgateway within 15s")
        time.sleep(0.2)


@pytest.fixture
def alerting_stack(tmp_path: Path) -> Iterator[AlertingStack]:
    from tests.conftest import require_binary

    for binary in BINARIES.values():
        require_binary(binary, "bash scripts/test.sh (installs Debian's prometheus packages)")
    work = tmp_path / "alerting"
    work.mkdir()
    pg, am, prom = (f"127.0.0.1:{_free_port()}" for _ in range(3))
    servers: list[_Server] = []
    with WebhookReceiver() as webhook:
        try:
            servers.append(_start("pushgateway", [
                BINARIES["pushgateway"], f"--web.listen-address={pg}", "--persistence.file=",
            ], f"http://{pg}", work))
            servers.append(_start("alertmanager", [
                BINARIES["alertmanager"],
                f"--config.file={_alertmanager_config(webhook.url, work / 'alertmanager.yml')}",
                f"--storage.path={work / 'am-data'}", f"--web.listen-address={am}",
                "--cluster.listen-address=",  # no HA gossip port
            ], f"http://{am}", work))
            servers.append(_start("prometheus", [
                BINARIES["prometheus"],
                f"--config.file={_prometheus_config(pg, am, work / 'prometheus.yml')}",
                f"--storage.tsdb.path={work / 'prom-data'}", f"--web.listen-address={prom}",
            ], f"http://{prom}", work))
            stack = AlertingStack(f"http://{pg}", f"http://{prom}", f"http://{am}", webhook)
            _wait_until_scraping(stack)
            yield stack
        finally:
            shutdown_telemetry()  # the run's last push, while Pushgateway still listens
            for server in reversed(servers):
                server.stop()


def _docs() -> list[dict[str, Any]]:
    words = ["alpha beta gamma delta", "north south east west", "red green blue black"]
    api = [{"id": f"api-{i}", "text": t, "metadata": {"priority": "high"}} for i, t in enumerate(words)]
    local = [{"id": f"local-{i}", "text": f"a quiet street number {i} near the park"} for i in range(3)]
    return api + local


@pytest.mark.slow
def test_run_that_exhausts_a_tiny_monthly_budget_fires_the_alert_at_the_webhook(
    alerting_stack: AlertingStack, make_settings: SettingsFactory, fake_api: FakeOpenAIServer,
    tmp_path: Path,
) -> None:
    overrides = api_overrides(fake_api, models=[{"version": "fake-v1", "model": "fake-embed",
                                                 "price_per_million_tokens": PRICE_PER_MILLION}])
    overrides.update({
        "routing": {"rules": [{"field": "priority", "equals": "high", "tier": "api"}], "api_threshold": 1.0,
                    "mode": "exclusive", "budget_decides": False},
        "budget": {"monthly_usd": MONTHLY_USD},
        "telemetry": {"exporter": "pushgateway", "pushgateway_url": alerting_stack.pushgateway,
                      # Pushes at least one scrape interval apart: the seeded zeros are
                      # scraped before the first spend replaces them (docs/observability.md).
                      "export_interval_s": 3, "progress_dir": str(tmp_path / "progress")},
    })
    events: list[dict[str, Any]] = []
    src = write_jsonl(tmp_path / "docs.jsonl", _docs())
    # A provider's replies take time; here they also outlast a scrape interval, so Prometheus
    # sees the seeded zeros before the spend (a run shorter than that pushes everything at
    # its end; see docs/observability.md).
    fake_api.configure(latency_s=2.0)

    report = run_embedding(make_settings(overrides), str(src), emit=lambda **kw: events.append(kw))
    pushed_at = time.monotonic()  # run_embedding's last act is the final push

    assert report.cost_usd == MONTHLY_USD == report.month_to_date_after_usd  # spent to the last bit
    assert report.over_budget == 1 and report.accounting_ok()
    note, alert = alerting_stack.webhook.wait_for_alert("TierembedBudgetExceeded", timeout_s=45)
    delivered_s = note.received_at - pushed_at
    assert delivered_s < 20, f"alert took {delivered_s:.1f}s from the push to the webhook"
    assert note.body["receiver"] == "tierembed-budget-critical"
    assert alert["labels"] == {"alertname": "TierembedBudgetExceeded", "job": "tierembed",
                               "severity": "critical", "team": "data-platform", "service": "tierembed"}
    assert alert["annotations"]["summary"] == "tierembed monthly embedding budget exceeded (100% spent)"
    assert "is 100% of the monthly limit" in alert["annotations"]["description"]

    # The counters took the same path: the seeded zero let increase() see the first spend.
    cost = alerting_stack.query('embedding_cost_USD_total{job="tierembed",tier="api"}')
    assert [float(r["value"][1]) for r in cost] == [MONTHLY_USD]
    samples = alerting_stack.query('embedding_cost_USD_total{tier="api"}[5m]')
    values = [float(v) for _, v in samples[0]["values"]]
    assert values[0] == 0 and values[-1] == MONTHLY_USD, values
    increase = alerting_stack.query('increase(embedding_cost_USD_total{tier="api"}[5m])')
    assert float(increase[0]["value"][1]) > 0
    # Prefect got the matching event, which the documented automation reacts to.
    exceeded = [e for e in events if e["event"] == "tierembed.budget.exceeded"]
    assert [e["resource"]["prefect.resource.id"] for e in exceeded] == ["tierembed.budget.month"]


def test_budget_automation_is_valid_and_matches_only_the_monthly_exceeded_event() -> None:
    from prefect.events.schemas.automations import AutomationCore
    from prefect.events.schemas.events import Resource

    from flows.budget_events import budget_event
    from tiering.budget import BudgetAlert, BudgetLevel

    documents = yaml.safe_load(AUTOMATION.read_text())["automations"]
    (automation,) = [AutomationCore.model_validate(a) for a in documents]
    trigger = automation.trigger
    assert [a.type for a in automation.actions] == ["pause-deployment"]

    def matches(scope: str, level: BudgetLevel) -> bool:
        event = budget_event(BudgetAlert(scope, level, 2.0, 1.0, 0.8), run_id="r1", month="2026-11")
        return event["event"] in trigger.expect and trigger.match.includes([Resource(event["resource"])])

    assert matches("month", BudgetLevel.EXCEEDED)
    assert not matches("run", BudgetLevel.EXCEEDED)
    assert not matches("month", BudgetLevel.WARNING)
