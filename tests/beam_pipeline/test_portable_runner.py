"""The whole pipeline on Beam's PortableRunner, with the workers in other processes.

Beam's own local job service (``local_job_service_main``) plans and runs the job the way
Flink, Spark and Dataflow do: the pipeline is serialized to a portable proto, every DoFn,
side input and setting is pickled, and the work runs in SDK harness processes started by a
worker pool (``worker_pool_main``, the EXTERNAL environment a Flink or Spark cluster uses
with a Python sidecar). The run must leave the same store contents and the same accounting
as the in-process FnApiRunner, and a re-run must skip every unchanged document through the
in-pipeline join.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from beam_pipeline.pipeline import PipelineSpec, ResolvedApi, api_prices, run_pipeline
from beam_pipeline.progress import run_progress_dir
from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig
from tests.conftest import SettingsFactory, corpus, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer
from tiering.report import RunReport, build_report
from tiering.settings import TierembedSettings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s}s")


@pytest.fixture(scope="module")
def job_service() -> Iterator[list[str]]:
    """A local job service and an EXTERNAL worker pool, each its own process group; yields
    the pipeline flags that point a run at them."""
    job_port, pool_port = _free_port(), _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               # the pool starts each SDK harness as `python -c ...`: this venv's python
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    procs = [
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                          "--port", str(job_port)], env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                          f"--service_port={pool_port}"], env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        _wait_port(job_port, procs[0])
        _wait_port(pool_port, procs[1])
        yield [f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL",
               f"--environment_config=localhost:{pool_port}"]
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def _settings(make_settings: SettingsFactory, server: FakeOpenAIServer, store: str,
              **pipeline: Any) -> TierembedSettings:
    return make_settings({
        "api": {"endpoint": "custom", "base_url": server.base_url, "api_key": "test",
                "models": [{"version": "fake-v1", "model": "fake-embed", "price_per_million_tokens": 2.0}],
                # each run its own result cache: the second must pay as the first did
                "result_cache": {"path": store + "-results.sqlite"}},
        "routing": {"rules": [{"field": "priority", "equals": "high", "tier": "api"}], "api_threshold": 1.0,
                    "mode": "exclusive"},
        "local": {"precision": "fp32"},
        "sink": {"lancedb": {"uri": store}},
        **({"pipeline": pipeline} if pipeline else {}),
    })


def _run(settings: TierembedSettings, server: FakeOpenAIServer, src: Path, run_id: str) -> RunReport:
    outcome = run_pipeline(PipelineSpec(settings, str(src), run_id, None,
                                        ResolvedApi(server.base_url, "test", "fake")))
    assert outcome.state == "DONE"
    prices = api_prices(settings)
    return build_report(
        run_id=run_id, source=str(src), counters=outcome.counters,
        local_models={m.version: m.model for m in settings.local.models},
        api_models={m.version: (m.model, prices[m.version]) for m in settings.api.models},
        dead_letter_path=outcome.dead_letter_prefix,
    )


def _table(uri: str, version: str) -> dict[str, tuple[str, str, np.ndarray]]:
    import lancedb

    rows = lancedb.connect(uri).open_table(LanceDBSinkConfig(uri).table_name(version)).to_arrow().to_pylist()
    return {r["id"]: (r["content_hash"], r["tier"], np.asarray(r["vector"])) for r in rows}


def _figures(r: RunReport) -> dict[str, Any]:
    return {
        "read": r.records_read, "valid": r.documents_valid, "dead": r.dead_letters_by_stage,
        "written": r.written, "routed": r.documents_routed, "skipped": r.skipped_unchanged,
        "lines": [(x.tier, x.model_version, x.documents, x.chunked_documents, x.chunks, x.billed_tokens)
                  for x in r.lines],
    }


def test_portable_runner_with_worker_processes_matches_the_in_memory_runner(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer, job_service: list[str]
) -> None:
    docs = corpus(14, long_every=6)
    for d in docs[:4]:
        d["metadata"]["priority"] = "high"
    src = write_jsonl(tmp_path / "docs.jsonl", [*docs, "{not json", {"id": "no-text"}])
    progress = str(tmp_path / "progress")

    local = _settings(make_settings, fake_api, str(tmp_path / "in-memory"))
    portable = _settings(make_settings, fake_api, str(tmp_path / "portable"),
                         runner="PortableRunner", options=job_service)
    portable = portable.model_copy(update={"telemetry": portable.telemetry.model_copy(
        update={"progress_dir": progress})})

    expected = _run(local, fake_api, src, "in-memory")
    got = _run(portable, fake_api, src, "portable")
    assert got.accounting_ok() and expected.accounting_ok()
    assert _figures(got) == _figures(expected)
    assert (got.written, got.dead_letters) == (14, 2)

    for version in ("minilm-l6-v2", "fake-v1"):
        want, have = _table(local.sink.lancedb.uri, version), _table(portable.sink.lancedb.uri, version)
        assert have.keys() == want.keys() and len(have) == (10 if version == "minilm-l6-v2" else 4)
        for doc_id, (hash_, tier, vector) in want.items():
            assert have[doc_id][:2] == (hash_, tier)
            assert float(np.dot(have[doc_id][2], vector)) > 0.9999

    # the writer ran in a worker process, not in this one (its progress file carries its pid)
    files = list(Path(run_progress_dir(progress, "portable")).glob("*.json"))
    assert files and all(not f.name.startswith(f"{os.getpid()}-") for f in files)

    billed = fake_api.stats().billed_tokens_total
    again = _run(portable, fake_api, src, "portable-rerun")
    assert again.skipped_unchanged == 14 and again.written == 0 and again.accounting_ok()
    assert fake_api.stats().billed_tokens_total == billed  # the join ran on the workers: nothing paid
