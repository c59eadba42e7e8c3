"""The imports done while the temporary Prefect server boots (flows/warmup.py)."""

from __future__ import annotations

import urllib.request

from flows.prefect_server import TemporaryPrefectServer, prefect_api
from flows.warmup import modules_for, warm_up
from tests.conftest import SettingsFactory


def test_an_in_process_run_imports_beam_the_local_model_library_and_its_store_client(
    make_settings: SettingsFactory,
) -> None:
    assert modules_for(make_settings()) == ["beam_pipeline.pipeline", "sentence_transformers", "lancedb"]
    weaviate = make_settings({"sink": {"kind": "weaviate"}})
    assert modules_for(weaviate) == ["beam_pipeline.pipeline", "sentence_transformers"]


def test_runners_with_their_own_workers_get_no_warm_up(make_settings: SettingsFactory) -> None:
    for pipeline in ({"direct_running_mode": "multi_processing", "direct_num_workers": 2},
                     {"runner": "PortableRunner"}, {"runner": "DataflowRunner"}):
        settings = make_settings({"pipeline": pipeline})
        assert modules_for(settings) == [] and warm_up(settings) is None, pipeline


def test_the_warm_up_runs_while_the_server_boots_and_its_failure_is_not_the_runs() -> None:
    server = TemporaryPrefectServer(startup_timeout_s=180)
    seen: list[bool] = []

    def warm() -> None:
        assert server.proc is not None
        seen.append(server.proc.poll() is None)  # the server process is already running
        raise ImportError("a warm-up that fails")

    url = server.start(warm)
    try:
        assert seen == [True]
        with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:  # started all the same
            assert resp.status == 200
    finally:
        server.stop()


def test_no_warm_up_with_a_configured_prefect_api() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    calls: list[int] = []
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with prefect_api(lambda: calls.append(1)) as url:
            assert url is None
    assert calls == []
