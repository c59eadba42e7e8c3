"""The API tier's backend: OpenAI or any OpenAI-compatible embeddings endpoint.

Retry layer: ``ApiEmbedder._run_request`` is the ONE retry layer on this call path. The
official ``openai`` client is built with ``max_retries=0``; Beam and Prefect do not retry
this work either. It retries 408/409/429/5xx, timeouts, connection errors and malformed
replies with exponential backoff and full jitter (:class:`tiering.backoff.BackoffPolicy`:
bounded failures, 429s and total time); a 400-class reply other than 429 is terminal. A
malformed reply is any 200 whose structure is wrong (unparseable JSON, no ``data``, wrong
indices or counts); an exception of a type this module does not know becomes a terminal
:class:`CallFailure` naming the type, so one odd reply dead-letters its batch's inputs and
never crashes the run.

Pacing, per endpoint and model (this worker's share, see ``api.worker_share``):

* requests are packed by estimated tokens up to the model's per-request limits, the inputs
  of one group (the chunks of one document, :attr:`ApiInput.group`) together when they fit;
  inputs over the per-input limit (:attr:`ApiEmbedder.max_tokens_per_input`, the model's
  limit capped by tokens per minute) are never sent (``InputTooLong``);
* two aiolimiter leaky buckets, requests per minute and tokens per minute (each request
  acquires its estimated tokens), plus a cap on requests in flight;
* the buckets follow the provider: after a reply the estimate is replaced by the billed
  ``usage`` (the difference is refunded), a rejected request's tokens are refunded, and
  ``x-ratelimit-remaining-*`` lowers the local room to what the provider reports
  (:func:`tiering.ratelimits.synced_level`), so the local bucket waits exactly the deficit
  over the refill rate instead of a full reset;
* until the first informative reply, requests go out one at a time: the local buckets start
  full, the provider's may not (an earlier run, another client), and one probe's headers
  tell us where it stands before a burst;
* a 429's ``Retry-After`` / ``retry-after-ms`` (or, without them, the deficit from the
  ``x-ratelimit-*`` headers) pauses every request of this worker, not only the one refused.

Failures: a circuit breaker stops calling an endpoint that keeps failing (the documents of
short-circuited requests are reported so the caller can route them to the local tier or
dead-letter them); a 400-class reply about the input is bisected so only the offending
input is dead-lettered; 401/403/404 mean the endpoint refuses this worker (bad key, wrong model or
URL), so later requests fail at once without being sent; their inputs are reported
retryable (fix the configuration, then replay). An optional spend cap (this worker's share
of the run budget) keeps requests whose estimated cost would pass it from being sent at
all; once one input of a group is refused, the group's inputs not yet sent are refused too
(a document is embedded whole or not at all). What remains: chunks of a document sent in
an earlier request are billed even if a later chunk fails or is refused; those tokens stay
in ``billed_tokens`` and the cost.

Billing of failed requests: a request that got an error status or a malformed reply is
taken as unbilled and gives its spend reservation back. A request that timed out may still
have been served and billed after the client gave up, so its reservation is kept as an
upper bound (settled at the estimate in the spend guard); it is not counted in
``billed_tokens`` or the cost, only in ``ApiCallStats.timed_out_est_tokens``. Replies
without ``usage`` are charged at the estimate and flagged (``EmbedOutcome.unmetered``,
``ApiCallStats.unmetered_tokens``).

Provider error text is scrubbed of the configured API key and of anything shaped like an
``sk-...`` key before it goes into a :class:`CallFailure` (and so into logs and dead letters).

Vendor exceptions are mapped to :class:`CallFailure` in ``_classify`` and nowhere else, by
exception type and status code. This module imports no Beam: ``embed_api.py`` adapts it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiolimiter import AsyncLimiter

from tiering.backoff import BackoffPolicy
from tiering.breaker import BreakerState, CircuitBreaker
from tiering.packing import RequestLimits, pack_grouped
from tiering.pricing import Price, SpendGuard, apportion
from tiering.ratelimits import parse_rate_limit_headers, server_wait_s, synced_level

__all__ = [
    "ApiEmbedderConfig",
    "ApiInput",
    "CallFailure",
    "ApiCallStats",
    "EmbedOutcome",
    "ApiEmbedder",
]

_log = logging.getLogger(__name__)
_ENDPOINT_REFUSES = frozenset({401, 403, 404})
_RETRYABLE_4XX = frozenset({408, 409})
_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_\-*.]+")


@dataclass(frozen=True, slots=True)
class ApiEmbedderConfig:
    """Everything one worker's embedder needs; limits are this worker's share."""

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
    spend_cap_usd: float | None = None
    """This worker's share of the run budget; None = no runtime cap."""
    price: Price | None = None
    """The model's price, for the spend cap's estimates (billing uses ``usage``)."""

    def __repr__(self) -> str:  # never print the key
        return f"ApiEmbedderConfig(base_url={self.base_url!r}, model={self.model!r}, api_key=***)"


@dataclass(frozen=True, slots=True)
class ApiInput:
    """One text to embed and its estimated tokens (from :mod:`tiering.chunking`)."""

    text: str
    est_tokens: int
    group: int | None = None
    """Inputs sharing a group (the chunks of one document) are packed together when they
    fit and refused together by the spend cap; None is a group of its own."""


@dataclass(frozen=True, slots=True)
class CallFailure:
    """One failed attempt, classified. ``status`` is the HTTP code or a failure kind
    ('timeout', 'connection', 'malformed', 'too_long', 'breaker_open')."""

    status: str
    error_type: str
    message: str
    retryable: bool
    counts_for_breaker: bool
    retry_after_s: float | None = None
    about_input: bool = False
    """A terminal 4xx that names the input (or nothing): bisect to find the bad one."""
    endpoint_refused: bool = False
    """401/403/404: not retried in this run, but retryable by replay once the key, model or
    endpoint is fixed."""


@dataclass
class ApiCallStats:
    """What one :meth:`ApiEmbedder.embed` call did; billed and estimated figures apart."""

    requests_by_status: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    rate_limit_wait_s: float = 0.0
    billed_tokens: int = 0
    """Tokens from replies' ``usage`` (every 200, whatever became of its documents)."""
    unmetered_tokens: int = 0
    """Estimated tokens of 200 replies that carried no ``usage`` (not in billed_tokens)."""
    timed_out_est_tokens: int = 0
    """Estimated tokens of timed-out requests: maybe billed by the provider, never counted
    in billed_tokens; the spend guard keeps them as spent (an upper bound)."""
    sent_est_tokens: int = 0
    over_budget_inputs: int = 0
    breaker_opened: int = 0
    latencies_s: list[float] = field(default_factory=list)


@dataclass
class EmbedOutcome:
    """Per input index: a vector (with its billed tokens), a failure, or not sent because
    the breaker was open (``short_circuited``) or the spend cap was reached (``over_budget``)."""

    vectors: dict[int, list[float]] = field(default_factory=dict)
    billed_tokens: dict[int, int] = field(default_factory=dict)
    failures: dict[int, CallFailure] = field(default_factory=dict)
    short_circuited: set[int] = field(default_factory=set)
    over_budget: set[int] = field(default_factory=set)
    unmetered: set[int] = field(default_factory=set)
    """Inputs whose reply had no ``usage``: their ``billed_tokens`` are the estimate."""
    stats: ApiCallStats = field(default_factory=ApiCallStats)


@dataclass
class _Job:
    """One packed request through its attempts."""

    idxs: tuple[int, ...]
    tokens: int
    started: float
    failures: int = 0
    throttled: int = 0
    reserved: bool = False


class _MalformedReply(Exception):
    pass


class _FollowedLimiter(AsyncLimiter):
    """aiolimiter's leaky bucket, corrected by what the provider reports."""

    def refund(self, amount: float) -> None:
        """Give back capacity the provider did not use (a negative amount takes more)."""
        self._leak()
        self._level = max(0.0, self._level - amount)
        self._wake_next()

    def follow(self, server_remaining: float) -> None:
        """Never keep more room than the provider says is left."""
        self._leak()
        self._level = synced_level(self._level, self.max_rate, server_remaining)


def _headers_of(exc: BaseException) -> Mapping[str, str]:
    response = getattr(exc, "response", None)
    return dict(response.headers) if response is not None else {}


def _status_failure(exc: Any, msg: str, needed_tokens: int) -> CallFailure:
    code = int(exc.status_code)
    wait = server_wait_s(_headers_of(exc), needed_tokens, time.time())
    if code == 429:
        return CallFailure("429", "RateLimited", msg, True, False, wait)
    if code >= 500 or code in _RETRYABLE_4XX:
        return CallFailure(str(code), "ServerError", msg, True, True, wait)
    if code in _ENDPOINT_REFUSES:
        return CallFailure(
            str(code), type(exc).__name__,
            f"{msg}; the endpoint refused this worker: fix api key, model or base_url, then "
            "replay these documents with `tierembed replay`", True, False, endpoint_refused=True,
        )
    about_input = getattr(exc, "param", None) in (None, "input")
    return CallFailure(str(code), type(exc).__name__, msg, False, False, about_input=about_input)


def _scrub(text: str, api_key: str) -> str:
    """Remove the configured key and anything that looks like an ``sk-`` key."""
    if len(api_key) >= 4:
        text = text.replace(api_key, "***")
    return _KEY_LIKE.sub("sk-***", text)


def _classify(exc: BaseException, needed_tokens: int, api_key: str = "") -> CallFailure:
    """Map an exception from the openai client to a CallFailure (the one vendor mapping).

    Never raises: an exception type not known here is a terminal failure naming the type."""
    import openai

    msg = _scrub(f"{type(exc).__name__}: {exc}", api_key)[:500]
    if isinstance(exc, openai.APITimeoutError):
        return CallFailure("timeout", "Timeout", msg, True, True)
    if isinstance(exc, openai.APIConnectionError):
        return CallFailure("connection", "ConnectionError", msg, True, True)
    if isinstance(exc, openai.APIStatusError):
        return _status_failure(exc, msg, needed_tokens)
    if isinstance(exc, (openai.APIResponseValidationError, _MalformedReply, json.JSONDecodeError)):
        return CallFailure("malformed", "MalformedReply", msg, True, True)
    return CallFailure(
        "unexpected", type(exc).__name__,
        f"unexpected {msg}; not retried (report it as a bug with this message)", False, False,
    )


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
        self.spend = SpendGuard(config.spend_cap_usd, config.price)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pause_until = 0.0
        self._refused: CallFailure | None = None
        self._warned_limit = False
        self._rpm: _FollowedLimiter | None = None
        self._tpm: _FollowedLimiter | None = None
        self._sem: asyncio.Semaphore | None = None
        self._probe: asyncio.Lock | None = None
        self._calibrated: asyncio.Event | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def _ensure_async_parts(self) -> None:
        if self._sem is not None:
            return
        self._rpm = _FollowedLimiter(self.config.requests_per_minute, 60)
        self._tpm = _FollowedLimiter(self.config.tokens_per_minute, 60)
        self._sem = asyncio.Semaphore(self.config.max_in_flight)
        self._probe = asyncio.Lock()
        self._calibrated = asyncio.Event()
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

    @property
    def breaker_state(self) -> BreakerState:
        return self.breaker.state

    # -- embedding -----------------------------------------------------------------------
    async def aembed(self, inputs: Sequence[ApiInput]) -> EmbedOutcome:
        """Embed ``inputs``; every index ends in exactly one field of the outcome."""
        self._ensure_async_parts()
        outcome = EmbedOutcome()
        packing = pack_grouped([i.est_tokens for i in inputs], _groups_of(inputs),
                               self._effective_limits())
        for i in packing.oversized:
            outcome.failures[i] = self._too_long(inputs[i])
        await asyncio.gather(*(self._run_request(inputs, idxs, outcome) for idxs in packing.requests))
        outcome.stats.breaker_opened = self.breaker.times_opened
        return outcome

    def _effective_limits(self) -> RequestLimits:
        # aiolimiter cannot grant more than its capacity in one acquire.
        return self.config.limits.capped(self.config.tokens_per_minute)

    @property
    def max_tokens_per_input(self) -> int:
        """The largest input this embedder will send: chunk documents to this."""
        return self._effective_limits().max_tokens_per_input

    def _too_long(self, item: ApiInput) -> CallFailure:
        limit = self._effective_limits().max_tokens_per_input
        return CallFailure(
            "too_long", "InputTooLong",
            f"input of ~{item.est_tokens} estimated tokens is over the per-input limit {limit} "
            "and was not sent; chunk it to the model's limit", False, False,
        )

    async def _run_request(
        self, inputs: Sequence[ApiInput], idxs: Sequence[int], outcome: EmbedOutcome
    ) -> None:
        job = _Job(tuple(idxs), sum(inputs[i].est_tokens for i in idxs), self._clock())
        try:
            await self._attempts(inputs, job, outcome)
        finally:
            self._release(job)

    async def _attempts(self, inputs: Sequence[ApiInput], job: _Job, outcome: EmbedOutcome) -> None:
        while True:
            failure = await self._gated_attempt(inputs, job, outcome)
            if failure is None:
                return
            if not failure.retryable or failure.endpoint_refused:
                await self._on_terminal(inputs, job, failure, outcome)
                return
            if failure.status == "timeout" and len(job.idxs) > 1:
                # A request too large to be answered in time would time out again: halve it.
                await self._split(inputs, job, outcome)
                return
            delay = self._next_delay(job, failure)
            if delay is None:
                self._fail(job, failure, outcome)
                return
            outcome.stats.retries += 1
            await self._sleep(delay)

    def _next_delay(self, job: _Job, failure: CallFailure) -> float | None:
        """The wait before the next attempt, or None when this request has had enough."""
        throttled = failure.status == "429"
        if throttled:
            job.throttled += 1
        else:
            job.failures += 1
        attempt = job.throttled - 1 if throttled else job.failures - 1
        delay = self.config.backoff.delay(attempt, self._rng, failure.retry_after_s)
        elapsed = self._clock() - job.started
        if not self.config.backoff.should_retry(job.failures, elapsed, delay, job.throttled):
            return None
        return delay

    async def _gated_attempt(
        self, inputs: Sequence[ApiInput], job: _Job, outcome: EmbedOutcome
    ) -> CallFailure | None:
        holds_probe = await self._enter_probe_gate()
        try:
            return await self._attempt(inputs, job, outcome)
        finally:
            if holds_probe:
                assert self._probe is not None
                self._probe.release()

    async def _enter_probe_gate(self) -> bool:
        """Until the provider has told us where its buckets stand, one request at a time.

        Returns whether this task holds the probe lock (and must release it)."""
        assert self._calibrated is not None and self._probe is not None
        if self._calibrated.is_set():
            return False
        await self._probe.acquire()
        if self._calibrated.is_set():
            self._probe.release()
            return False
        return True

    async def _attempt(
        self, inputs: Sequence[ApiInput], job: _Job, outcome: EmbedOutcome
    ) -> CallFailure | None:
        """One try: refuse fast, wait for capacity, check the budget, then the breaker, send.

        The budget is checked before ``breaker.allow()``, which claims the single half-open
        trial: a request refused by the budget must not leave that trial claimed forever."""
        if self._refused is not None:
            return self._refused
        if self.breaker.state is BreakerState.OPEN:
            outcome.short_circuited.update(job.idxs)
            return None
        if not job.reserved and not self._drop_refused_groups(inputs, job, outcome):
            return None
        await self._wait_for_capacity(job.tokens, outcome.stats)
        if not self._reserve(job):
            self._correct(-job.tokens, requests=-1)
            self._over_budget(job.idxs, outcome)
            return None
        if not self.breaker.allow():
            self._release(job)
            self._correct(-job.tokens, requests=-1)
            outcome.short_circuited.update(job.idxs)
            return None
        return await self._send(inputs, job, outcome)

    @staticmethod
    def _over_budget(idxs: Sequence[int], outcome: EmbedOutcome) -> None:
        outcome.over_budget.update(idxs)
        outcome.stats.over_budget_inputs += len(idxs)

    def _drop_refused_groups(
        self, inputs: Sequence[ApiInput], job: _Job, outcome: EmbedOutcome
    ) -> bool:
        """Refuse, unsent, the inputs whose group already had an input refused by the spend
        cap (their document cannot be completed); False when nothing is left to send."""
        refused = {inputs[i].group for i in outcome.over_budget} - {None}
        if not refused:
            return True
        dropped = [i for i in job.idxs if inputs[i].group in refused]
        if dropped:
            self._over_budget(dropped, outcome)
            job.idxs = tuple(i for i in job.idxs if inputs[i].group not in refused)
            job.tokens = sum(inputs[i].est_tokens for i in job.idxs)
        return bool(job.idxs)

    # -- budget --------------------------------------------------------------------------
    def _reserve(self, job: _Job) -> bool:
        if job.reserved:
            return True
        job.reserved = self.spend.try_reserve(job.tokens)
        return job.reserved

    def _release(self, job: _Job) -> None:
        if job.reserved:
            self.spend.release(job.tokens)
            job.reserved = False

    # -- capacity ------------------------------------------------------------------------
    async def _wait_for_capacity(self, tokens: int, stats: ApiCallStats) -> None:
        assert self._rpm is not None and self._tpm is not None
        waited_from = self._clock()
        await self._wait_out_pause()
        await self._rpm.acquire(1)
        await self._tpm.acquire(tokens)
        await self._wait_out_pause()  # a 429 may have arrived while we queued
        stats.rate_limit_wait_s += self._clock() - waited_from

    async def _wait_out_pause(self) -> None:
        while (now := self._clock()) < self._pause_until:
            await self._sleep(self._pause_until - now)

    def _correct(self, tokens: int, requests: int = 0) -> None:
        """Adjust what the local buckets hold by what the provider really took (signed)."""
        assert self._rpm is not None and self._tpm is not None
        self._tpm.refund(-tokens)
        if requests:
            self._rpm.refund(-requests)

    # -- one HTTP call -------------------------------------------------------------------
    async def _send(
        self, inputs: Sequence[ApiInput], job: _Job, outcome: EmbedOutcome
    ) -> CallFailure | None:
        assert self._sem is not None and self._client is not None
        stats = outcome.stats
        async with self._sem:
            t0 = self._clock()
            try:
                raw = await self._client.embeddings.with_raw_response.create(**self._body(inputs, job))
                reply, vectors = self._parsed(raw, len(job.idxs))
            except Exception as exc:  # noqa: BLE001 - classified; unknown types are terminal
                return self._on_failed_reply(exc, job, stats)
            finally:
                stats.latencies_s.append(self._clock() - t0)
        self._on_success(inputs, job, reply, vectors, dict(raw.headers), outcome)
        return None

    def _body(self, inputs: Sequence[ApiInput], job: _Job) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.config.model, "input": [inputs[i].text for i in job.idxs]}
        if self.config.dimensions:
            body["dimensions"] = self.config.dimensions
        if self.config.input_type:
            body["extra_body"] = {"input_type": self.config.input_type}
        return body

    @classmethod
    def _parsed(cls, raw: Any, expected: int) -> tuple[Any, list[list[float]]]:
        """The parsed 200 reply and its vectors; a body of the wrong shape is _MalformedReply."""
        try:
            reply = raw.parse()  # the SDK's legacy raw response parses synchronously
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # e.g. the SDK's "No embedding data received" for {"error": ...} sent with a 200
            raise _MalformedReply(f"200 reply the SDK cannot parse: {type(exc).__name__}: {exc}") from exc
        return reply, cls._vectors(reply, expected)

    @staticmethod
    def _vectors(reply: Any, expected: int) -> list[list[float]]:
        """The reply's vectors in input order; any structural problem is _MalformedReply."""
        data = getattr(reply, "data", None)
        if not isinstance(data, list):
            raise _MalformedReply(f"200 reply without a data list (got {type(data).__name__})")
        try:
            ordered = sorted(data, key=lambda d: d.index)
            indices = [d.index for d in ordered]
            vectors = [_embedding_of(d) for d in ordered]
        except (AttributeError, TypeError) as exc:
            raise _MalformedReply(f"200 reply with malformed data: {type(exc).__name__}") from exc
        if indices != list(range(expected)):
            raise _MalformedReply(f"reply has {len(data)} embeddings for {expected} inputs")
        return vectors

    def _on_failed_reply(self, exc: Exception, job: _Job, stats: ApiCallStats) -> CallFailure:
        failure = _classify(exc, job.tokens, self.config.api_key)
        stats.requests_by_status[failure.status] += 1
        if failure.status == "timeout":
            self._keep_timed_out_reservation(job, stats)
        if failure.status.isdigit():
            # The provider answered with an error: it admitted no tokens. The request slot
            # stays spent (providers may count refused requests); headers resync the rest.
            self._correct(-job.tokens)
            self._feedback(_headers_of(exc), answered=not failure.status.startswith("5"))
        if failure.counts_for_breaker:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()  # a 429 or a 4xx proves the endpoint alive
        if failure.retry_after_s is not None and failure.status == "429":
            self._pause_until = max(self._pause_until, self._clock() + failure.retry_after_s)
        if failure.endpoint_refused:
            self._refused = failure
        return failure

    def _keep_timed_out_reservation(self, job: _Job, stats: ApiCallStats) -> None:
        """The provider may have served (and billed) a request the client gave up on: the
        spend guard keeps its estimate as spent, an upper bound; stats do not call it billed."""
        stats.timed_out_est_tokens += job.tokens
        if job.reserved:
            self.spend.settle(job.tokens, job.tokens)
            job.reserved = False

    def _on_success(
        self,
        inputs: Sequence[ApiInput],
        job: _Job,
        reply: Any,
        vectors: list[list[float]],
        headers: Mapping[str, str],
        outcome: EmbedOutcome,
    ) -> None:
        stats = outcome.stats
        stats.requests_by_status["200"] += 1
        stats.sent_est_tokens += job.tokens
        self.breaker.record_success()
        billed = self._billed(reply, job, stats)
        if billed is None:  # no usage: charge the estimate, flagged as such
            stats.unmetered_tokens += job.tokens
            outcome.unmetered.update(job.idxs)
            billed = job.tokens
        self._correct(billed - job.tokens)  # the bill replaces the estimate
        self._feedback(headers, answered=True)
        self.spend.settle(job.tokens, billed)
        job.reserved = False
        shares = apportion(billed, [inputs[i].est_tokens for i in job.idxs])
        for pos, i in enumerate(job.idxs):
            outcome.vectors[i] = vectors[pos]
            outcome.billed_tokens[i] = shares[pos]

    @staticmethod
    def _billed(reply: Any, job: _Job, stats: ApiCallStats) -> int | None:
        """The reply's billed tokens (added to stats), or None when it has no usage."""
        usage = getattr(reply, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        if not isinstance(prompt_tokens, int):
            return None
        stats.billed_tokens += prompt_tokens
        return prompt_tokens

    def _feedback(self, headers: Mapping[str, str], *, answered: bool) -> None:
        """Follow the provider's own view of its buckets (see the module docstring)."""
        assert self._rpm is not None and self._tpm is not None and self._calibrated is not None
        state = parse_rate_limit_headers(headers)
        if state.remaining_tokens is not None:
            self._tpm.follow(state.remaining_tokens)
        if state.remaining_requests is not None:
            self._rpm.follow(state.remaining_requests)
        self._warn_if_over_provider_limit(state.limit_tokens, state.limit_requests)
        if state.known or answered:
            self._calibrated.set()

    def _warn_if_over_provider_limit(self, limit_tokens: int | None, limit_requests: int | None) -> None:
        too_high = (limit_tokens is not None and self.config.tokens_per_minute > limit_tokens) or (
            limit_requests is not None and self.config.requests_per_minute > limit_requests
        )
        if too_high and not self._warned_limit:
            self._warned_limit = True
            _log.warning(
                "API %s: configured %d RPM / %d TPM exceed the provider's limits %s RPM / %s TPM; "
                "expect 429s. Lower api.requests_per_minute / api.tokens_per_minute.",
                self.config.model, self.config.requests_per_minute, self.config.tokens_per_minute,
                limit_requests, limit_tokens,
            )

    # -- terminal outcomes ---------------------------------------------------------------
    async def _on_terminal(
        self, inputs: Sequence[ApiInput], job: _Job, failure: CallFailure, outcome: EmbedOutcome
    ) -> None:
        if len(job.idxs) > 1 and failure.about_input:
            # Find the offending input(s) instead of dead-lettering the whole request.
            await self._split(inputs, job, outcome)
            return
        self._fail(job, failure, outcome)

    async def _split(self, inputs: Sequence[ApiInput], job: _Job, outcome: EmbedOutcome) -> None:
        self._release(job)
        mid = len(job.idxs) // 2
        await asyncio.gather(
            self._run_request(inputs, job.idxs[:mid], outcome),
            self._run_request(inputs, job.idxs[mid:], outcome),
        )

    @staticmethod
    def _fail(job: _Job, failure: CallFailure, outcome: EmbedOutcome) -> None:
        for i in job.idxs:
            outcome.failures[i] = failure


def _groups_of(inputs: Sequence[ApiInput]) -> list[int]:
    """Each input's group as an int; an input without one is a group of its own."""
    offset = 1 + max((i.group for i in inputs if i.group is not None), default=-1)
    return [i.group if i.group is not None else offset + pos for pos, i in enumerate(inputs)]


def _embedding_of(item: Any) -> list[float]:
    embedding = item.embedding
    if not isinstance(embedding, list) or not embedding:
        raise TypeError(f"embedding is {type(embedding).__name__}, not a list of floats")
    return embedding
