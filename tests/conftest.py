"""Shared fixtures: isolated settings per test, sample corpora, the fake OpenAI server."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Beam's TestPipeline defaults to the DirectRunner, which in Beam 2.7x first tries its Prism
# runner (downloading a binary when online, then running the test on a runner nobody chose)
# and leaves a beam-temp* and two tmp* folders in the system temp folder per pipeline. Our
# tests run on the runner the product uses by default: the in-process FnApiRunner. A run of
# pytest may still name another with --test-pipeline-options="--runner=...".
_TEST_RUNNER = "--runner=FnApiRunner"
# What must never be left in the temp folder by a test session (checked at its end).
_LEFTOVER_PREFIXES = ("beam-temp", "beam-pipeline-temp")
_session_tmp: dict[str, Any] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    try:
        parser.addoption("--test-pipeline-options", default=None,
                         help="Beam pipeline options for TestPipeline (default: " + _TEST_RUNNER + ")")
    except ValueError:  # Beam's own pytest plugin registered it already
        pass


def pytest_configure(config: pytest.Config) -> None:
    from apache_beam.testing.test_pipeline import TestPipeline

    TestPipeline.pytest_test_pipeline_options = (
        config.getoption("--test-pipeline-options", default=None) or _TEST_RUNNER
    )
    # A temp folder of this session's own (the machine's /tmp is shared by other runs), so
    # that the check at the end sees only what this session left behind. Subprocesses
    # (the CLI under test, servers) inherit it through TMPDIR.
    base = Path(tempfile.mkdtemp(prefix="tierembed-tests-"))
    _session_tmp.update(base=base, previous=os.environ.get("TMPDIR"), remove=False)
    os.environ["TMPDIR"] = str(base)
    tempfile.tempdir = None  # recomputed from TMPDIR
    # Removed at exit, after the atexit hooks registered later (Prefect's test harness cleans
    # its own folder in there from one).
    atexit.register(_remove_session_tmp)


def _remove_session_tmp() -> None:
    if _session_tmp.get("remove"):
        shutil.rmtree(_session_tmp["base"], ignore_errors=True)


def _leftovers(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.name.startswith(_LEFTOVER_PREFIXES))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    base: Path | None = _session_tmp.get("base")
    if base is None or not base.exists():
        return
    left = _leftovers(base)
    if left:
        # Fail the session: every pipeline must clean up after itself (see _TEST_RUNNER).
        print(f"\nFAILED: the test session left Beam temporary folders in {base}: {left}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    _session_tmp["remove"] = exitstatus == 0  # otherwise keep the tests' files for a look

from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig  # noqa: E402
from tiering.settings import TierembedSettings, load_settings  # noqa: E402

SettingsFactory = Callable[..., TierembedSettings]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(autouse=True)
def _own_result_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own API result cache (the default path is relative to the working
    directory and would carry paid vectors from one test into the next, CLI children too)."""
    monkeypatch.setenv("TIEREMBED_API__RESULT_CACHE__PATH", str(tmp_path / "api_results.sqlite"))


# Loggers whose levels the CLI sets (flows/cli.py `_setup_logging`). In-process CLI tests
# would otherwise leave "flows" at WARNING for every later test, and a later test's caplog
# would see nothing: the CI run of 2026-12-05 failed that way.
_LOGGERS_THE_CLI_SETS = ("", "tierembed", "flows", "beam_pipeline", "apache_beam", "httpx",
                         "httpx2", "sentence_transformers", "lancedb")


@pytest.fixture(autouse=True)
def _restore_logger_levels() -> Iterator[None]:
    import logging

    loggers = [logging.getLogger(name) for name in _LOGGERS_THE_CLI_SETS]
    levels = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings whose store, dead letters and ledger live under tmp_path."""

    def _make(overrides: dict[str, Any] | None = None) -> TierembedSettings:
        base = {
            "sink": {"lancedb": {"uri": str(tmp_path / "store")}},
            "dead_letters": {"dir": str(tmp_path / "dead_letters")},
            "budget": {"ledger_path": str(tmp_path / "ledger.sqlite")},
        }
        return load_settings(overrides=_merge(base, overrides or {}))

    return _make


@pytest.fixture
def graph_only() -> Iterator[Callable[[list[str]], Any]]:
    """Pipelines built only to inspect their graph (never run): Beam makes a temp folder
    for each at construction and removes it only in ``run()``, so remove it here."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    made: list[beam.Pipeline] = []

    def _new(flags: list[str]) -> beam.Pipeline:
        made.append(beam.Pipeline(options=PipelineOptions(flags)))
        return made[-1]

    yield _new
    for p in made:
        shutil.rmtree(p.local_tempdir, ignore_errors=True)


@pytest.fixture
def fake_api() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(FakeServerConfig()) as server:
        yield server


def api_overrides(server: FakeOpenAIServer, **api: Any) -> dict[str, Any]:
    """Settings overrides pointing the API tier at ``server``."""
    return {"api": {"endpoint": "custom", "base_url": server.base_url, "api_key": "test", **api}}


def write_jsonl(path: Path, records: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


LISTING = ("Bright {n} bedroom house with a private garden, renovated kitchen and garage, "
           "close to schools and the station. Asking price {p} EUR, {a} square metres.")
ANALYSIS = ("Rental yield analysis for district {n}: gross yields of {p} percent, vacancy at "
            "{a} percent, zoning ordinance changes and mortgage stress tests at 7 percent; cap "
            "rates compress by 25 bps as the EPC regulation tightens retrofit requirements.")


def corpus(n_docs: int, *, long_every: int = 0) -> list[dict[str, Any]]:
    """A small mixed corpus: short listings and denser analyses; some long ones if asked."""
    docs: list[dict[str, Any]] = []
    for i in range(n_docs):
        template = ANALYSIS if i % 3 == 0 else LISTING
        text = template.format(n=i % 6 + 1, p=100_000 + 1000 * i, a=50 + i)
        if long_every and i % long_every == 0:
            text = " ".join([text] * 25)
        docs.append({"id": f"doc-{i:03d}", "text": text, "metadata": {"kind": "test", "n": i}})
    return docs


def require_binary(name: str, hint: str) -> str:
    """Path of a system tool a test needs. Missing: skip on a laptop, FAIL in CI (where
    scripts/test.sh installs it), so a broken setup can never turn into a green run."""
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed; install it with `{hint}`"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run this test)")
        pytest.skip(message)
    return path
