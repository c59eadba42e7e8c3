"""The temporary Prefect API of one ``tierembed run`` when no Prefect server is configured.

Without ``PREFECT_API_URL`` Prefect starts a temporary server by itself (its
``SubprocessASGIServer``: uvicorn running ``prefect.server.api.server:create_app``) and stops it
from an ``atexit`` hook. A SIGKILL skips that hook, so the server lived on after the run,
reparented to PID 1, with the run's whole environment (``OPENAI_API_KEY`` included). The CLI
therefore starts the same server itself, the same way Prefect does (prefect 3.9,
``server/api/server.py``, ``SubprocessASGIServer._run_uvicorn_command``), but with the
parent-death signal armed and without secrets in its environment (``flows.processes``),
and points this process at it for the run.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from flows.processes import child_environment, dying_with_parent
from tiering.errors import ConfigError

__all__ = ["TemporaryPrefectServer", "prefect_api"]

_log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TemporaryPrefectServer:
    """Prefect's API server on loopback for one run; dies with the process that started it."""

    def __init__(self, startup_timeout_s: float = 120.0) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self, while_starting: Callable[[], None] | None = None) -> str:
        """Start the server and wait until it answers; ``while_starting`` runs in this process
        meanwhile (the server boots in its own process, so the two overlap)."""
        import prefect
        from prefect.settings import get_current_settings

        self.port = _free_port()
        argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
                "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        env = child_environment({
            **get_current_settings().to_environment_variables(exclude_unset=True),
            "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
        })
        env.pop("PREFECT_API_URL", None)
        self._log = tempfile.TemporaryFile(prefix="tierembed-prefect-")  # unlinked: nothing left on SIGKILL
        # Its own session: a Ctrl-C (or `timeout`) signals the terminal's whole process group,
        # and the server must outlive the run's own shutdown, which still reports to it. It is
        # stopped in prefect_api(), or killed by the kernel when this process dies.
        self.proc = subprocess.Popen(dying_with_parent(argv), env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        if while_starting is not None:
            try:
                while_starting()
            except Exception:  # noqa: BLE001 - a warm-up only saves time; the run reports real errors
                _log.debug("warm-up while the Prefect server starts failed", exc_info=True)
        self._wait_healthy()
        _log.info("temporary Prefect server (pid %d) at %s", self.proc.pid, self.api_url)
        return self.api_url

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"the temporary Prefect server exited with code {self.proc.returncode}: "
                                  f"{self._tail()}; set PREFECT_API_URL to use a running Prefect server")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise ConfigError(f"the temporary Prefect server did not answer within "
                          f"{self.startup_timeout_s:.0f}s; set PREFECT_API_URL to use a running "
                          "Prefect server")

    def _tail(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-1000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None


@contextmanager
def prefect_api(while_starting: Callable[[], None] | None = None) -> Iterator[str | None]:
    """Use the configured Prefect API, or a temporary server of our own for the block.
    Yields the API URL of the temporary server, or None when PREFECT_API_URL is set.

    ``while_starting`` runs while our server boots (not at all with a configured API: then
    there is no wait to hide it in)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
        yield None
        return
    timeout_s = max(120.0, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    server = TemporaryPrefectServer(timeout_s)
    url = server.start(while_starting)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_prefect_workers()
    finally:
        server.stop()


def _drain_prefect_workers(timeout_s: float = 10.0) -> None:
    """Send the logs and events Prefect still holds to the server before it stops (its log
    worker otherwise reports "Error logging to API" at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - lost log lines must not fail a finished run
            _log.debug("draining %s failed: %s", worker.__name__, exc)
