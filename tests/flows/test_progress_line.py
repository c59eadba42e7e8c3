"""The live progress of a run: the CLI's rich line and the Prefect progress artifact, fed by
the API stage as its replies arrive."""

from __future__ import annotations

import io
from pathlib import Path
from uuid import UUID, uuid4

from rich.console import Console

from beam_pipeline.progress import ProgressRecorder, RunProgress, read_progress
from flows.progress_line import ProgressLine, render_progress
from flows.telemetry_flow import ProgressArtifact


def test_the_line_shows_documents_tokens_dollars_and_waits_on_429s() -> None:
    line = render_progress(RunProgress(written=10, dead_lettered=1, fell_back=2, api_documents=1204,
                                       api_tokens=48113, api_cost_usd=0.000962, api_requests=19,
                                       api_429=1, api_wait_s=3.25))
    assert line == ("API 1,204 docs, 48,113 tokens, $0.000962, 19 requests (1 answered 429), waited "
                    "3.2s for rate limits | store: 10 written, 1 dead-lettered, 2 moved to the local tier")


def test_the_line_follows_the_progress_files_while_the_run_works(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    worker = ProgressRecorder(str(tmp_path), min_interval_s=0)
    with ProgressLine(str(tmp_path), console=console, interval_s=3600) as live:
        worker.add(api_documents=5, api_tokens=300, api_cost_usd=0.0003, api_requests=2)
        live.refresh()
        first = live.last
        worker.add(api_documents=5, api_tokens=200, api_cost_usd=0.0002, api_requests=1, api_429=1)
        live.refresh()
    assert first.startswith("API 5 docs, 300 tokens, $0.000300, 2 requests")
    assert live.last.startswith("API 10 docs, 500 tokens, $0.000500, 3 requests (1 answered 429)")
    assert "API 10 docs" in out.getvalue()


def test_no_line_is_drawn_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    out = io.StringIO()
    ProgressRecorder(str(tmp_path), min_interval_s=0).add(api_documents=1)
    with ProgressLine(str(tmp_path), console=Console(file=out, force_terminal=False), interval_s=0.01):
        pass
    assert out.getvalue() == ""


def test_the_prefect_artifact_moves_with_the_api_replies_before_anything_is_written(tmp_path: Path) -> None:
    updates: list[tuple[float, str]] = []

    def update(_: UUID, progress: float, description: str) -> None:
        updates.append((progress, description))

    artifact = ProgressArtifact("run-9", str(tmp_path), "unused", interval_s=3600,
                                create=lambda *a: uuid4(), update=update, count=lambda s, f: 100)
    artifact.start()
    artifact._total = 100  # what the polling thread counts first (it waits an hour here)
    worker = ProgressRecorder(str(tmp_path), min_interval_s=0)
    worker.add(api_documents=25, api_tokens=900, api_cost_usd=0.0009, api_requests=3, api_429=1,
               api_wait_s=2.0)
    assert artifact.poll() == 25.0
    worker.add(api_documents=25, api_tokens=800, api_cost_usd=0.0008, api_requests=2)
    assert artifact.poll() == 50.0
    artifact.stop(complete=True, note="done")
    assert [p for p, _ in updates] == [25.0, 50.0, 100.0]
    api = "API tier: 50 documents, 1700 tokens billed ($0.001700), 5 requests, 1 answered 429"
    assert api in updates[1][1]
    assert read_progress(str(tmp_path)).api_documents == 50
