"""The CLI on hostile input with the API down, then the replay: what a user sees (issue 12).

One run over a folder the issue built piece by piece (a lone surrogate, 5,000 nested arrays,
bytes that are not UTF-8, a CSV with an unterminated quote, a .txt and a binary file) while
the API endpoint is dead: no traceback, every record accounted for, the skipped files named,
the bytes kept in base64, and - documents the API tier could not embed being dead letters -
exit code 3 with the status saying why. Then the API comes back and ``tierembed replay``
embeds exactly those documents, which keep their original source, and exits 0.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig

ROOT = Path(__file__).resolve().parents[2]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    drop = ("OPENAI_", "TIEREMBED_", "PREFECT_API_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), TIEREMBED_CONFIG=str(cwd / "config.yaml"))
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def _inputs(folder: Path) -> None:
    folder.mkdir()
    good = [json.dumps({"id": f"g{i}", "text": f"Bright {i} bedroom house with a garden",
                        "metadata": {"priority": "high" if i < 3 else "low"}}) for i in range(6)]
    (folder / "docs.jsonl").write_text("\n".join([
        *good[:2], '{"id": "B", "text": "a \\ud800 b"}', "[" * 5000 + "]" * 5000, *good[2:],
        '{"id": "M", "text": "t", "metadata": {"k": "\\udc00"}}']) + "\n")
    (folder / "latin1.jsonl").write_bytes(b'{"id": "L", "text": "caf\xe9"}\n')
    (folder / "rows.csv").write_text('id,text\nc1,one row\nc2,"never closed\nc3,three rows\n')
    (folder / "notes.txt").write_text("not an input")
    (folder / "blob.bin").write_bytes(bytes(range(256)))


@pytest.mark.slow
def test_hostile_input_with_the_api_down_fails_clearly_then_replay_completes(tmp_path: Path) -> None:
    # The API never answered: the run fails (exit 1; issue 11), without a traceback, with every
    # record accounted for and the API documents in the dead letters for replay.
    with FakeOpenAIServer(FakeServerConfig(dead=True)) as api:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({
            "api": {"endpoint": "custom", "base_url": api.base_url, "api_key": "test",
                    "models": [{"version": "fake-v1", "model": "fake", "price_per_million_tokens": 1.0}],
                    "retry": {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02},
                    # probes every 0.5 s for 2 s, not the default 30 s for 120 s
                    "breaker": {"failure_threshold": 1, "on_open": "dead_letter",
                                "reset_after_s": 0.5, "max_wait_s": 2.0}},
            "routing": {"rules": [{"field": "priority", "equals": "high", "tier": "api"}],
                        "api_threshold": 1.0},
            "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
            "dead_letters": {"dir": str(tmp_path / "dl")},
            "budget": {"ledger_path": str(tmp_path / "ledger.sqlite")},
        }))
        _inputs(tmp_path / "in")
        run = _cli(["run", str(tmp_path / "in")], tmp_path)
        assert "Traceback" not in run.stderr + run.stdout, run.stderr[-4000:]
        assert run.returncode == 1, run.stderr[-3000:] + run.stdout
        out = run.stdout
        assert "read 13 records: 8 valid documents, 5 rejected by validation" in out
        assert "accounting OK" in out and "status: failed (exit code 1)" in out
        assert "every one of" in out and "failed (503:" in out
        # coverage mode: 8 local targets + 3 API targets
        assert "3 of 11 targets dead-lettered by embed: 3" in out and "tierembed replay" in out
        assert "2 input file(s) skipped" in out and "blob.bin" in out and "notes.txt" in out

        [letters_dir] = list((tmp_path / "dl").iterdir())
        files = letters_dir.glob("*.jsonl")
        letters = [json.loads(line) for f in files for line in f.read_text().splitlines()]
        assert len(letters) == 8 and not list(letters_dir.glob("beam-temp*"))
        [latin1] = [d for d in letters if d["payload_encoding"] == "base64"]
        assert base64.b64decode(latin1["payload"]) == b'{"id": "L", "text": "caf\xe9"}'
        assert {d["doc_id"] for d in letters if d["stage"] == "embed"} == {"g0", "g1", "g2"}

        api.configure(dead=False)
        replay = _cli(["replay", str(letters_dir)], tmp_path)
        assert "Traceback" not in replay.stderr + replay.stdout, replay.stderr[-4000:]
        assert replay.returncode == 0, replay.stderr[-3000:] + replay.stdout
        assert "replaying 3 documents" in replay.stdout and "status: completed (exit code 0)" in replay.stdout

    from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore

    table = LanceDBStore(LanceDBSinkConfig(str(tmp_path / "store")))._open("fake-v1", None)
    rows = table.search().select(["id", "source"]).to_arrow().to_pylist()
    assert sorted(r["id"] for r in rows) == ["g0", "g1", "g2"]
    assert {r["source"].rsplit(":", 1)[0] for r in rows} == {str(tmp_path / "in" / "docs.jsonl")}
