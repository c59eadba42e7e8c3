"""The API tier's backend: OpenAI or any OpenAI-compatible embeddings endpoint.

Retry layer: ``ApiEmbedder._run_request`` is the ONE retry layer on this call path. The
official ``openai`` client is built with ``max_retries=0``; Beam and Prefect do not retry
this work either. It retries 408/409/429/5xx, timeouts, connection errors and malformed
replies with exponential backoff and full jitter, obeys ``Retry-After`` (pausing every
request of this worker, not only the one that got the 429), slows down before a 429 from
the ``x-ratelimit-remaining-*`` headers, and stops calling a failing endpoint through a
circuit breaker. A 400-class reply is terminal; when it answers a packed request, the
request is bisected so only the offending document is dead-lettered.

Vendor exceptions are mapped to :class:`CallFailure` in ``_classify`` and nowhere else.
This module imports no Beam: ``embed_api.py`` adapts it to a DoFn.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tiering.backoff import BackoffPolicy
from tiering.breaker import BreakerState, CircuitBreaker
from tiering.packing import RequestLimits, pack_requests
from tiering.ratelimits import parse_rate_limit_headers, parse_retry_after

__all__ = [
    "ApiEmbedderConfig",
    "ApiInput",
    "CallFailure",
    "ApiCallStats",
    "EmbedOutcome",
    "ApiEmbedder",
]


@dataclass(frozen=True, slots=True)
class ApiEmbedderConfig:
    base_url: str | None
    api_key: str
    model: str
    provider: str
    limits: RequestLimits
    requests_per_minute: int
    tokens_per_minute: int
    max_in_flight: int
    timeout_s: float
    backoff: BackoffPolicy
    breaker_failure_threshold: int
    breaker_reset_after_s: float
    dimensions: int | None = None
    input_type: str | None = None

    def __repr__(self) -> str:  # never print the key
        return f"ApiEmbedderConfig(base_url={self.base_url!r}, model={self.model!r}, api_key=***)"


@dataclass(frozen=True, slots=True)
class ApiInput:
    text: str
    est_tokens: int


@dataclass(frozen=True, slots=True)
class CallFailure:
    """One failed attempt, classified. ``status`` is the HTTP code or 'timeout'/'connection'."""

    status: str
    error_type: str
    message: str
    retryable: bool
    counts_for_breaker: bool
    retry_after_s: float | None = None


@dataclass
class ApiCallStats:
    requests_by_status: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    rate_limit_wait_s: float = 0.0
    billed_tokens: int = 0
    sent_est_tokens: int = 0
    breaker_opened: int = 0
    latencies_s: list[float] = field(default_factory=list)


@dataclass
class EmbedOutcome:
    """Per input index: a vector, or a failure, or short-circuited by the open breaker."""

    vectors: dict[int, list[float]] = field(default_factory=dict)
    billed_tokens: dict[int, float] = field(default_factory=dict)
    failures: dict[int, CallFailure] = field(default_factory=dict)
    short_circuited: set[int] = field(default_factory=set)
    stats: ApiCallStats = field(default_factory=ApiCallStats)


class _MalformedReply(Exception):
    pass


def _classify(exc: BaseException) -> CallFailure:
    """Map an exception from the openai client to a CallFailure (the one vendor mapping)."""
    import openai

    msg = f"{type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, openai.APITimeoutError):
        return CallFailure("timeout", "Timeout", msg, True, True)
    if isinstance(exc, openai.APIConnectionError):
        return CallFailure("connection", "ConnectionError", msg, True, True)
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        retry_after = parse_retry_after(dict(exc.response.headers), time.time())
        if code == 429:
            return CallFailure("429", "RateLimited", msg, True, False, retry_after)
        if code >= 500 or code in (408, 409):
            return CallFailure(str(code), "ServerError", msg, True, True, retry_after)
        return CallFailure(str(code), type(exc).__name__, msg, False, False)
    if isinstance(exc, (openai.APIResponseValidationError, _MalformedReply, json.JSONDecodeError)):
        return CallFailure("malformed", "MalformedReply", msg, True, True)
    raise exc


class ApiEmbedder:
    """Embeds inputs through an OpenAI-compatible endpoint at the provider's limits."""

    def __init__(
        self,
        config: ApiEmbedderConfig,
        *,
        client: Any | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.breaker = CircuitBreaker(
            config.breaker_failure_threshold, config.breaker_reset_after_s, clock
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pause_until = 0.0
        self._rpm: Any = None
        self._tpm: Any = None
        self._sem: asyncio.Semaphore | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def _ensure_async_parts(self) -> None:
        if self._sem is not None:
            return
        from aiolimiter import AsyncLimiter

        self._rpm = AsyncLimiter(self.config.requests_per_minute, 60)
        self._tpm = AsyncLimiter(self.config.tokens_per_minute, 60)
        self._sem = asyncio.Semaphore(self.config.max_in_flight)
        if self._client is None:
            import openai

            self._client = openai.AsyncOpenAI(
                api_key=self.config.api_key,
                base_url=self.config.base_url,
                max_retries=0,  # this module is the one retry layer
                timeout=self.config.timeout_s,
            )

    def embed(self, inputs: Sequence[ApiInput]) -> EmbedOutcome:
        """Synchronous entry point (Beam DoFns): runs on this embedder's own event loop."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self.aembed(inputs))

    def close(self) -> None:
        if self._loop is None:
            return
        if self._client is not None and hasattr(self._client, "close"):
            self._loop.run_until_complete(self._client.close())
        self._loop.close()
        self._loop = None

    # -- embedding -----------------------------------------------------------------------
    async def aembed(self, inputs: Sequence[ApiInput]) -> EmbedOutcome:
        self._ensure_async_parts()
        outcome = EmbedOutcome()
        requests = pack_requests([i.est_tokens for i in inputs], self._effective_limits())
        await asyncio.gather(*(self._run_request(inputs, idxs, outcome) for idxs in requests))
        outcome.stats.breaker_opened = self.breaker.times_opened
        return outcome

    def _effective_limits(self) -> RequestLimits:
        lim = self.config.limits
        # aiolimiter cannot grant more than its capacity in one acquire.
        return RequestLimits(lim.max_inputs, min(lim.max_tokens, self.config.tokens_per_minute),
                             lim.max_tokens_per_input)

    async def _run_request(
        self, inputs: Sequence[ApiInput], idxs: list[int], outcome: EmbedOutcome
    ) -> None:
        tokens = sum(inputs[i].est_tokens for i in idxs)
        started = self._clock()
        attempt = 0
        while True:
            if not self.breaker.allow():
                outcome.short_circuited.update(idxs)
                return
            failure = await self._attempt(inputs, idxs, tokens, outcome)
            if failure is None:
                return
            if not failure.retryable:
                await self._on_terminal(inputs, idxs, failure, outcome)
                return
            if failure.counts_for_breaker:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()  # a 429 proves the endpoint is alive
            delay = self.config.backoff.delay(attempt, self._rng, failure.retry_after_s)
            if failure.retry_after_s is not None:
                self._pause_until = max(self._pause_until, self._clock() + failure.retry_after_s)
            elapsed = self._clock() - started
            if not self.config.backoff.should_retry(attempt, elapsed, delay):
                for i in idxs:
                    outcome.failures[i] = failure
                return
            outcome.stats.retries += 1
            await self._sleep(delay)
            attempt += 1

    async def _on_terminal(
        self, inputs: Sequence[ApiInput], idxs: list[int], failure: CallFailure, outcome: EmbedOutcome
    ) -> None:
        if len(idxs) > 1 and failure.status in ("400", "422"):
            # Find the offending input(s) instead of dead-lettering the whole request.
            mid = len(idxs) // 2
            await asyncio.gather(
                self._run_request(inputs, idxs[:mid], outcome),
                self._run_request(inputs, idxs[mid:], outcome),
            )
            return
        for i in idxs:
            outcome.failures[i] = failure

    async def _wait_for_capacity(self, tokens: int, stats: ApiCallStats) -> None:
        waited_from = self._clock()
        while (now := self._clock()) < self._pause_until:
            await self._sleep(self._pause_until - now)
        await self._rpm.acquire(1)
        await self._tpm.acquire(tokens)
        stats.rate_limit_wait_s += self._clock() - waited_from

    async def _attempt(
        self, inputs: Sequence[ApiInput], idxs: list[int], tokens: int, outcome: EmbedOutcome
    ) -> CallFailure | None:
        stats = outcome.stats
        await self._wait_for_capacity(tokens, stats)
        assert self._sem is not None
        async with self._sem:
            t0 = self._clock()
            try:
                raw = await self._client.embeddings.with_raw_response.create(**self._body(inputs, idxs))
                reply = raw.parse()
                vectors = self._vectors(reply, len(idxs))
                billed = int(reply.usage.prompt_tokens) if reply.usage else tokens
            except Exception as exc:  # noqa: BLE001 - classified, unknown types re-raised
                failure = _classify(exc)
                stats.requests_by_status[failure.status] += 1
                return failure
            finally:
                stats.latencies_s.append(self._clock() - t0)
        stats.requests_by_status["200"] += 1
        stats.billed_tokens += billed
        stats.sent_est_tokens += tokens
        self.breaker.record_success()
        self._feedback(dict(raw.headers), tokens)
        for pos, i in enumerate(idxs):
            outcome.vectors[i] = vectors[pos]
            outcome.billed_tokens[i] = billed * (inputs[i].est_tokens / tokens)
        return None

    def _body(self, inputs: Sequence[ApiInput], idxs: list[int]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.config.model, "input": [inputs[i].text for i in idxs]}
        if self.config.dimensions:
            body["dimensions"] = self.config.dimensions
        if self.config.input_type:
            body["extra_body"] = {"input_type": self.config.input_type}
        return body

    @staticmethod
    def _vectors(reply: Any, expected: int) -> list[list[float]]:
        data = sorted(reply.data, key=lambda d: d.index)
        if len(data) != expected:
            raise _MalformedReply(f"reply has {len(data)} embeddings for {expected} inputs")
        return [list(d.embedding) for d in data]

    def _feedback(self, headers: dict[str, str], last_tokens: int) -> None:
        """Slow down before a 429: if the window is nearly spent, wait for its reset."""
        state = parse_rate_limit_headers(headers)
        now = self._clock()
        if state.remaining_requests is not None and state.remaining_requests <= 0 and state.reset_requests_s:
            self._pause_until = max(self._pause_until, now + state.reset_requests_s)
        if (
            state.remaining_tokens is not None
            and state.remaining_tokens < last_tokens
            and state.reset_tokens_s
        ):
            self._pause_until = max(self._pause_until, now + state.reset_tokens_s)

    @property
    def breaker_state(self) -> BreakerState:
        return self.breaker.state
