"""End to end through Prefect: server, work pool, deploy, worker, `prefect deployment run`.

Starts a real `prefect server` on loopback with a temporary PREFECT_HOME, creates the process
work pool, deploys every deployment of the real deployments/prefect.yaml, starts a process
worker with TIEREMBED_HOME at this checkout (the pull step changes into it) and runs
`prefect deployment run 'embed-documents/adhoc' --watch` on a small JSONL file. The API tier
talks to the fake OpenAI-compatible server (in this process) through a small proxy that
records the Authorization header, and takes its key from a Prefect Secret block.

It checks that the flow run Completed, that the vectors are in the LanceDB store and findable,
that the key from the Secret block is the one the API received, and that the key appears in
none of the flow run's logs, artifacts, flow-run record, dead letters, ledger or worker output.
Everything started here is stopped in `finally`, by process group (each was started as the
leader of its own session).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import corpus, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig, embed_text

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
POOL = "tierembed-process"
DEPLOYMENT = "embed-documents/adhoc"
SECRET_BLOCK = "tierembed-e2e-api-key"
API_VERSION = "te3-small"
N_DOCS = 8


# --- processes -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _base_env(prefect_home: Path, api_url: str) -> dict[str, str]:
    """This environment without any Prefect, tierembed or OpenAI settings of the developer's."""
    dropped = ("PREFECT_", "TIEREMBED_", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        # No scheduled runs of the nightly/weekly deployments can reach this worker.
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv,
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group this test started (the pid leads it), then SIGKILL it."""
    if proc is None:
        return
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)  # pgid == pid: started with start_new_session=True
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    if proc.returncode is None:
        proc.wait(timeout=5)


def _prefect(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _wait_healthy(api_url: str, server: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prefect server exited with {server.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"prefect server not healthy after {timeout_s:.0f} s:\n{_tail(log)}")


def _tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


# --- the API, seen through a proxy that records the key it was called with ------------------


class _AuthRecordingProxy:
    """Forwards every request to ``upstream`` and records its Authorization header."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.authorizations: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def _forward(self, body: bytes | None) -> None:
                proxy.authorizations.append(self.headers.get("Authorization", ""))
                request = urllib.request.Request(
                    proxy.upstream + self.path,
                    data=body,
                    method=self.command,
                    headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as reply:
                        status, headers, payload = reply.status, reply.headers, reply.read()
                except urllib.error.HTTPError as error:
                    status, headers, payload = error.code, error.headers, error.read()
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in {
                        "content-length",
                        "connection",
                        "transfer-encoding",
                        "server",
                        "date",
                    }:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @contextmanager
    def running(self) -> Iterator[_AuthRecordingProxy]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)


# --- Prefect API reads and writes from this process ---------------------------------------


async def _save_secret(api_url: str, key: str) -> None:
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import PrefectClient
    from pydantic import SecretStr

    async with PrefectClient(api_url) as client:
        await Secret(value=SecretStr(key)).asave(SECRET_BLOCK, overwrite=True, client=client)


async def _read_run(api_url: str) -> dict[str, Any]:
    """The adhoc deployment's one flow run, with its logs and artifacts."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        DeploymentFilter,
        DeploymentFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )

    async with PrefectClient(api_url) as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["adhoc"]))
        )
        assert len(runs) == 1, [r.name for r in runs]
        run = runs[0]
        logs: list[Any] = []
        while True:  # the server pages logs (200 at most per read)
            page = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), offset=len(logs)
            )
            logs.extend(page)
            if not page:
                break
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
        deployments = {d.name: d for d in await client.read_deployments()}
    return {"run": run, "logs": logs, "artifacts": artifacts, "deployments": deployments}


# --- the test ------------------------------------------------------------------------------


def _write_inputs(tmp_path: Path, api_base_url: str) -> tuple[Path, Path, list[dict[str, Any]]]:
    docs = corpus(N_DOCS)
    source = write_jsonl(tmp_path / "docs.jsonl", [*docs, "{not json: a dead letter"])
    config = {
        "api": {
            "endpoint": "custom",
            "base_url": api_base_url,
            "api_key_secret_block": SECRET_BLOCK,
            "models": [
                {"version": API_VERSION, "model": "text-embedding-3-small", "price_per_million_tokens": 0.02}
            ],
            "retry": {"max_attempts": 2, "base_delay_s": 0.1, "max_total_s": 10},
        },
        # Every valid document scores >= 0, so every one goes to the API tier.
        "routing": {"api_threshold": 0.0, "mode": "exclusive"},
        "budget": {"ledger_path": str(tmp_path / "ledger.sqlite")},
        "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
        "dead_letters": {"dir": str(tmp_path / "dead_letters")},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return source, config_path, docs


def test_adhoc_deployment_run_through_a_worker_completes_and_keeps_the_key_secret(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    key = f"sk-e2e-{uuid.uuid4().hex}"
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = _base_env(tmp_path / "prefect-home", api_url)
    # the flow runs in the checkout (the pull step): its default result cache would carry paid
    # vectors from an earlier run of this test into this one, which must pay the API itself
    env["TIEREMBED_API__RESULT_CACHE__PATH"] = str(tmp_path / "api_results.sqlite")
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    server = worker = None
    with FakeOpenAIServer(FakeServerConfig()) as fake, _AuthRecordingProxy(fake.url).running() as proxy:
        source, config_path, docs = _write_inputs(tmp_path, proxy.base_url)
        try:
            server = _start(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env,
                server_log,
            )
            _wait_healthy(api_url, server, server_log, timeout_s=45)
            created = _prefect(env, "work-pool", "create", POOL, "--type", "process")
            assert created.returncode == 0, created.stdout + created.stderr
            # The worker starts while the deployments are created: it polls every second.
            worker_env = {**env, "TIEREMBED_HOME": str(REPO_ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1"}
            worker = _start(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "worker",
                    "start",
                    "--pool",
                    POOL,
                    "--type",
                    "process",
                    "--install-policy",
                    "never",
                ],
                worker_env,
                worker_log,
            )
            asyncio.run(_save_secret(api_url, key))
            # TIEREMBED_HOME stays unset here: the stored pull step keeps the placeholder and
            # the worker resolves it from its own environment, as in production.
            deployed = _prefect(env, "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr

            ran = _prefect(
                env,
                "deployment",
                "run",
                DEPLOYMENT,
                "--param",
                f"source={source}",
                "--param",
                f"config_path={config_path}",
                "--watch",
                "--watch-interval",
                "1",
                "--watch-timeout",
                "70",
                timeout=80,
            )
            seen = asyncio.run(_read_run(api_url))
        finally:
            _stop(worker)
            _stop(server)
        worker_output = _tail(worker_log, 200_000)
        assert ran.returncode == 0, f"{ran.stdout}{ran.stderr}\n--- worker ---\n{worker_output[-6000:]}"

    run = seen["run"]
    assert run.state is not None and run.state.is_completed(), (run.state, worker_output[-6000:])
    assert set(seen["deployments"]) == {"nightly-incremental", "weekly-full-refresh", "adhoc", "backfill"}
    assert run.parameters == {"source": str(source), "config_path": str(config_path)}

    # The vectors are in the store, one per valid document, and each finds its own document.
    from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore

    store = LanceDBStore(LanceDBSinkConfig(str(tmp_path / "store")))
    assert store.count(API_VERSION) == N_DOCS
    for doc in docs[:3]:
        (hit,) = store.search(API_VERSION, embed_text(doc["text"]), k=1)
        assert (hit.id, hit.tier) == (doc["id"], "api") and hit.score > 0.99

    # The run report artifact says the same.
    (report,) = [a for a in seen["artifacts"] if a.key == "tierembed-run-report"]
    rows = json.loads(report.data) if isinstance(report.data, str) else report.data
    api_rows = [row for row in rows if row["tier"] == "api"]
    assert [(r["model_version"], r["documents"]) for r in api_rows] == [(API_VERSION, N_DOCS)]
    assert api_rows[0]["billed_tokens"] == fake.stats().billed_tokens_total > 0

    # The key reached the API, from the Secret block and from nowhere else ...
    assert proxy.authorizations and set(proxy.authorizations) == {f"Bearer {key}"}
    # ... and appears in nothing the run left behind.
    dead_letters = sorted((tmp_path / "dead_letters").rglob("*.jsonl"))
    assert dead_letters, "expected the bad line as a dead letter"
    places = {
        "flow-run logs": "\n".join(log.message for log in seen["logs"]),
        "artifacts": "\n".join(a.model_dump_json() for a in seen["artifacts"]),
        "flow run": run.model_dump_json(),
        "dead letters": "\n".join(p.read_text(errors="replace") for p in dead_letters),
        "ledger": (tmp_path / "ledger.sqlite").read_bytes().decode("latin-1"),
        "worker output": worker_output,
        "deploy/run output": deployed.stdout + deployed.stderr + ran.stdout + ran.stderr,
    }
    assert len(seen["logs"]) > 5
    leaked = [where for where, text in places.items() if key in text or key[7:] in text]
    assert not leaked, f"the API key leaked into: {leaked}"
    assert time.monotonic() - started < 120
