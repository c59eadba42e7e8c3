"""Offline checks of the alerting artefacts in deployments/alerts/.

The rules are exercised by their own promtool unit tests (`tierembed-rules.test.yml`) and the
Alertmanager example by `amtool`; both tools come from Debian's `prometheus` and
`prometheus-alertmanager` packages. Without them those tests skip, and the pure-Python checks
below (metric names against the app's contract, labels, annotations, test coverage of every
alert, routing structure) still run.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ALERTS_DIR = REPO_ROOT / "deployments" / "alerts"
RULES = ALERTS_DIR / "tierembed-rules.yml"
RULE_TESTS = ALERTS_DIR / "tierembed-rules.test.yml"
ALERTMANAGER = ALERTS_DIR / "alertmanager.yml"

APT_HINT = "apt-get install -y prometheus prometheus-alertmanager prometheus-pushgateway"

# The series the app exports (OpenTelemetry SDK -> Prometheus naming), with their labels.
METRIC_CONTRACT: dict[str, set[str]] = {
    "embedding_cost_USD_total": {"tier", "model_version", "provider"},
    "tierembed_tokens_total": {"tier", "model_version", "kind"},
    "tierembed_documents_total": {"tier", "outcome"},
    "tierembed_budget_limit_USD": {"period"},
    "tierembed_budget_spend_USD": {"period"},
    "tierembed_budget_moved_documents": {"period"},
    "tierembed_api_requests_total": {"provider", "model", "status"},
    "tierembed_api_retries_total": {"provider", "model"},
    "tierembed_api_breaker_state": {"provider", "model"},
}
# Labels Prometheus itself attaches (job from the app through honor_labels, instance, ...).
TARGET_LABELS = {"job", "instance"}

EXPECTED_ALERTS = {
    "TierembedBudgetWarning",
    "TierembedBudgetExceeded",
    "TierembedBudgetExhausted",
    "TierembedSpendRateHigh",
    "TierembedDeadLetterSurge",
    "TierembedApiErrorRate",
    "TierembedBreakerOpen",
}

_METRIC_TOKEN = re.compile(r"\b((?:tierembed|embedding)_[A-Za-z0-9_]+)\s*(\{[^}]*\})?")
_LABEL_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_BY_CLAUSE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def _tool(name: str) -> str:
    from tests.conftest import require_binary

    return require_binary(name, APT_HINT)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _rule(name: str) -> dict[str, Any]:
    return next(rule for rule in _rules() if rule["alert"] == name)


def _alertmanager() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    return loaded


# --- promtool / amtool ------------------------------------------------------------------


def test_promtool_rule_unit_tests_pass() -> None:
    promtool = _tool("promtool")
    result = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules_accepts_rule_file() -> None:
    promtool = _tool("promtool")
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(EXPECTED_ALERTS)} rules found" in result.stdout + result.stderr


def test_amtool_check_config_accepts_alertmanager_example() -> None:
    amtool = _tool("amtool")
    result = _run(amtool, "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (("alertname=TierembedBudgetExceeded", "severity=critical"), "tierembed-budget-critical"),
        (("alertname=TierembedBudgetWarning", "severity=warning"), "tierembed-budget"),
        (("alertname=TierembedSpendRateHigh", "severity=warning"), "tierembed-budget"),
        (("alertname=TierembedBreakerOpen", "severity=warning"), "tierembed-default"),
        (("alertname=TierembedDeadLetterSurge", "severity=warning"), "tierembed-default"),
    ],
)
def test_amtool_routes_alert_to_receiver(labels: tuple[str, ...], receiver: str) -> None:
    amtool = _tool("amtool")
    result = _run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


# --- rules, without promtool ------------------------------------------------------------


def test_rule_file_defines_each_expected_alert_once() -> None:
    names = [rule["alert"] for rule in _rules()]
    assert sorted(names) == sorted(EXPECTED_ALERTS)


def test_rules_use_only_contract_metrics_and_labels() -> None:
    for rule in _rules():
        expr = rule["expr"]
        tokens = _METRIC_TOKEN.findall(expr)
        assert tokens, f"{rule['alert']} reads no tierembed metric: {expr}"
        for metric, selector in tokens:
            assert metric in METRIC_CONTRACT, f"{rule['alert']}: unknown metric {metric}"
            used = set(_LABEL_NAME.findall(selector))
            allowed = METRIC_CONTRACT[metric] | TARGET_LABELS
            assert used <= allowed, f"{rule['alert']}: {metric} has no label {used - allowed}"


def test_rules_aggregate_over_known_labels_only() -> None:
    # `sum by (...)`/`max by (...)` on a label the series lack would silently merge series.
    known = set().union(*METRIC_CONTRACT.values()) | TARGET_LABELS
    for rule in _rules():
        for clause in _BY_CLAUSE.findall(rule["expr"]):
            labels = {label.strip() for label in clause.split(",") if label.strip()}
            assert "job" in labels, f"{rule['alert']} drops job: by ({clause})"
            assert labels <= known, f"{rule['alert']}: unknown labels {labels - known}"
            assert "instance" not in labels, f"{rule['alert']} splits by instance"


def test_every_alert_has_severity_team_and_actionable_annotations() -> None:
    for rule in _rules():
        labels, annotations = rule["labels"], rule["annotations"]
        assert labels["severity"] in {"warning", "critical"}, rule["alert"]
        assert labels["team"] == "data-platform", rule["alert"]
        assert annotations["summary"].strip(), rule["alert"]
        # The breaker's value is its state (2 = open), which the alert's name already says.
        if rule["alert"] != "TierembedBreakerOpen":
            assert "$value" in annotations["description"], f"{rule['alert']} hides its value"
        assert "Fix:" in annotations["description"], f"{rule['alert']} names no fix"


def test_budget_exceeded_is_critical_and_fires_without_waiting() -> None:
    rule = _rule("TierembedBudgetExceeded")
    assert rule["labels"]["severity"] == "critical"
    assert rule.get("for", "0m") in {"0m", "0s", "0"}


def test_ratios_guard_their_denominator_against_zero() -> None:
    for name in ("TierembedBudgetWarning", "TierembedDeadLetterSurge", "TierembedApiErrorRate"):
        denominator = _rule(name)["expr"].split("/", 1)[1]
        assert "> 0)" in denominator, f"{name} may divide by zero: {denominator}"


def test_rule_unit_tests_cover_every_alert_firing_and_silent() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert doc["rule_files"] == [RULES.name]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fired == EXPECTED_ALERTS, f"never tested firing: {EXPECTED_ALERTS - fired}"
    assert silent == EXPECTED_ALERTS, f"never tested silent: {EXPECTED_ALERTS - silent}"


def test_rule_unit_tests_include_79_percent_spend_without_warning() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    case = next(case for case in doc["tests"] if case["name"].startswith("79%"))
    checks = {check["alertname"]: check["exp_alerts"] for check in case["alert_rule_test"]}
    assert checks == {"TierembedBudgetWarning": [], "TierembedBudgetExceeded": []}


# --- Alertmanager, without amtool -------------------------------------------------------


def test_alertmanager_routes_name_existing_receivers() -> None:
    config = _alertmanager()
    receivers = {receiver["name"] for receiver in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert {route["receiver"] for route in routes} <= receivers


def test_alertmanager_sends_critical_budget_alerts_quickly_to_webhook() -> None:
    config = _alertmanager()
    route = next(
        route for route in config["route"]["routes"] if 'severity="critical"' in route.get("matchers", [])
    )
    assert any("TierembedBudget" in matcher for matcher in route["matchers"])
    assert route["group_wait"] in {"0s", "1s", "5s", "10s"}
    receiver = next(r for r in config["receivers"] if r["name"] == route["receiver"])
    assert receiver["webhook_configs"][0]["url"] == "http://127.0.0.1:9095/alerts"


def test_alertmanager_inhibits_warning_once_budget_is_exceeded_or_used_up() -> None:
    (rule,) = _alertmanager()["inhibit_rules"]
    assert rule["source_matchers"] == ['alertname=~"TierembedBudgetExceeded|TierembedBudgetExhausted"']
    assert rule["target_matchers"] == ['alertname="TierembedBudgetWarning"']
    assert rule["equal"] == ["job"]
