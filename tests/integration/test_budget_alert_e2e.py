"""End to end: a real run exhausts a tiny monthly budget and the alert reaches a webhook.

The chain under test is the production one, on loopback: the run's OpenTelemetry
instruments -> the SDK's Prometheus exporter -> Pushgateway (Debian's
``prometheus-pushgateway``) -> Prometheus (Debian's ``prometheus``, scraping it with
``honor_labels``, evaluating the real ``deployments/alerts/tierembed-rules.yml``) ->
Alertmanager (Debian's ``prometheus-alertmanager``, with the real
``deployments/alerts/alertmanager.yml``, its placeholder webhook URLs pointed at an in-test
receiver). Scrape and evaluation run every second. Every server is started on a free port
with its own temp data folder and stopped by its pid.

The budget: the API tier's price is 2^-20 USD a token (sums stay exact) and the monthly limit
60 tokens' worth; 40 short documents want the API (2 estimated tokens each, billed exactly
that). The plan admits 30 by their estimate; the spend guard sends a request only while the
bill so far plus the request's upper bound (its UTF-8 bytes) fits, so it stops short of the
limit and moves a few more. The run uses its budget up without passing 100%, and the
critical ``TierembedBudgetExhausted`` must reach the webhook.

Also here: the documented resume step (``tierembed budget resume``) against a real Prefect
3.9 server, after the budget automation paused the deployment.
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
MONTHLY_USD = 60 * 2**-20


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
    api = [{"id": f"api-{i:02d}", "text": f"house {i:02d}", "metadata": {"priority": "high"}}
           for i in range(40)]
    local = [{"id": f"local-{i}", "text": f"a quiet street number {i} near the park"} for i in range(3)]
    return api + local


@pytest.mark.slow
def test_run_that_uses_up_its_monthly_budget_below_100_percent_fires_the_critical_alert(
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
    # The provider bills exactly our estimate here, so the figures below are exact; its
    # replies take time and outlast a scrape interval, so Prometheus sees the seeded zeros
    # before the spend (a run shorter than that pushes everything at its end).
    fake_api.configure(token_count="estimate", latency_s=1.0)

    report = run_embedding(make_settings(overrides), str(src), emit=lambda **kw: events.append(kw))
    pushed_at = time.monotonic()  # run_embedding's last act is the final push

    moved = report.over_budget + report.fell_back_budget
    assert report.accounting_ok() and report.over_budget == 10 and report.fell_back_budget > 0
    assert 0 < report.cost_usd < MONTHLY_USD  # used up, never passed
    assert report.cost_usd == fake_api.stats().billed_tokens_total * 2**-20
    note, alert = alerting_stack.webhook.wait_for_alert("TierembedBudgetExhausted", timeout_s=45)
    delivered_s = note.received_at - pushed_at
    assert delivered_s < 20, f"alert took {delivered_s:.1f}s from the push to the webhook"
    assert note.body["receiver"] == "tierembed-budget-critical"
    assert alert["labels"] == {"alertname": "TierembedBudgetExhausted", "job": "tierembed", "period": "month",
                               "severity": "critical", "team": "data-platform", "service": "tierembed"}
    assert alert["annotations"]["summary"] == (
        f"tierembed month embedding budget used up: {moved} documents kept from the paid API")
    # Go's and Python's %.6g agree: sub-cent figures stay readable, not "0.00 of 0.00"
    assert f"(spent {report.cost_usd:.6g} of {MONTHLY_USD:.6g} USD)" in alert["annotations"]["description"]

    # The counters took the same path: the seeded zero let increase() see the first spend.
    cost = alerting_stack.query('embedding_cost_USD_total{job="tierembed",tier="api"}')
    assert [float(r["value"][1]) for r in cost] == [report.cost_usd]
    increase = alerting_stack.query('increase(embedding_cost_USD_total{tier="api"}[5m])')
    assert float(increase[0]["value"][1]) > 0
    # Prefect got the matching event, which the documented automation reacts to.
    exceeded = [e for e in events if e["event"] == "tierembed.budget.exceeded"]
    assert [e["resource"]["prefect.resource.id"] for e in exceeded] == ["tierembed.budget.month"]
    assert exceeded[0]["payload"]["documents_over_budget"] == moved


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


@pytest.mark.slow
def test_the_automation_pauses_the_deployment_and_the_documented_resume_step_resumes_it() -> None:
    """On a real Prefect 3.9 server: the automation file is applied as the docs say, a monthly
    budget event from a run of a deployment pauses that deployment, and `tierembed budget
    resume <flow>/<deployment>` (docs/observability.md) resumes it."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentCreate
    from prefect.events import emit_event
    from prefect.events.schemas.automations import AutomationCore
    from prefect.testing.utilities import prefect_test_harness
    from typer.testing import CliRunner

    from flows.budget_events import budget_event
    from flows.cli import app
    from tiering.budget import BudgetAlert, BudgetLevel

    with prefect_test_harness(server_startup_timeout=120), get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("embed-documents")
        deployment_id = client.create_deployment(**DeploymentCreate(
            flow_id=flow_id, name="nightly-incremental").model_dump(exclude_unset=True))
        for raw in yaml.safe_load(AUTOMATION.read_text())["automations"]:
            client.create_automation(AutomationCore.model_validate(raw))
        event = budget_event(BudgetAlert("month", BudgetLevel.EXCEEDED, 1.0, 1.0, 0.8, 12),
                             run_id="r1", month="2026-12")
        # what Prefect attaches to events emitted by a flow run of a deployment
        event["related"].append({"prefect.resource.id": f"prefect.deployment.{deployment_id}",
                                 "prefect.resource.role": "deployment"})
        emit_event(**event)
        deadline = time.monotonic() + 30
        while not client.read_deployment(deployment_id).paused:
            assert time.monotonic() < deadline, "the automation did not pause the deployment"
            time.sleep(0.2)

        result = CliRunner().invoke(app, ["budget", "resume", "embed-documents/nightly-incremental"])

        assert result.exit_code == 0, result.output
        assert "resumed" in result.output
        assert client.read_deployment(deployment_id).paused is False
        missing = CliRunner().invoke(app, ["budget", "resume", "embed-documents/no-such"])
        assert missing.exit_code == 2 and "no deployment" in missing.output
