"""The API tier's backend: OpenAI or any OpenAI-compatible embeddings endpoint.

Retry layer: ``ApiEmbedder._attempts`` is the ONE retry layer on this call path. The
official ``openai`` client is built with ``max_retries=0``; Beam and Prefect do not retry
this work either. It retries 408/409/429/5xx, timeouts, connection errors and malformed
replies with exponential backoff and full jitter (:class:`tiering.backoff.BackoffPolicy`:
bounded failures, 429s and total time); a 400-class reply other than 429 is terminal. A
malformed reply is any 200 whose structure is wrong (unparseable JSON, no ``data``, wrong
indices or counts); an exception of a type this module does not know becomes a terminal
:class:`CallFailure` naming the type, so one odd reply dead-letters its batch's inputs and
never crashes the run.

Requests that fit (per endpoint and model, this worker's share, see ``api.worker_share``):

* inputs are packed by estimated tokens up to the model's per-request limits and, on top,
  to ``max_request_share`` of the tokens-per-minute limit divided by the highest
  billed/estimated ratio seen so far, so one request never takes more than a small share
  of the provider's minute even when the provider counts more than our estimate; the
  inputs of one group (the chunks of one document, :attr:`ApiInput.group`) go together
  when they fit;
* a refusal for size splits the request instead of waiting: a 400 about the input
  (``context_length_exceeded``, too many tokens in the request) is bisected, and a 429 on
  tokens for a request that could be larger than the provider's whole token limit is
  split in halves. OpenAI's "Request too large" comes as a 429 whose structured fields
  (``type: "tokens"``, ``code: "rate_limit_exceeded"``) are those of any TPM limit (seen
  in public reports, e.g. github.com/TheR1D/shell_gpt/issues/653 and
  github.com/Aider-AI/aider/issues/1880); only the message text differs, which this module
  never reads. So the decision is structural: the request's upper bound of tokens (its
  UTF-8 bytes, :func:`tiering.chunking.token_upper_bound`) against
  ``x-ratelimit-limit-tokens``. The same request is never sent unchanged after such a
  refusal; a single input that cannot fit is dead-lettered.

Pacing by the provider's own state: requests and tokens go through two
:class:`tiering.ratelimits.SlidingWindow` s, the client's mirror of the provider's
60-second windows (not a leaky bucket: the provider frees capacity only as old requests
leave its window). A request counts from when it is sent, at its estimate times the
highest billed/estimated ratio seen (plus a margin), until one window after its reply,
where the bill replaces the estimate. ``x-ratelimit-remaining-*`` is the authority: when
it reports less room than the window sees, the difference is held until
``x-ratelimit-reset-*``; ``x-ratelimit-limit-*`` below the configured limit replaces it.
Requests are admitted first come, first served. Until the first reply, requests go out one
at a time (the provider's window may already be partly used). A 429 makes only the refused
request wait (its ``Retry-After``); the others wait on the corrected window.

Failures: a circuit breaker stops calling an endpoint that keeps failing. While it is open,
requests wait for it (at most ``breaker_max_wait_s`` each, counted from when they first
found it open); after ``reset_after_s`` one waiting request probes the endpoint, and its
success lets all of them go. A request whose wait passes the bound is reported
short-circuited (the caller routes it to the local tier or the dead letters). Every
transition is logged and counted. A 400-class reply about the input is bisected so only
the offending input is dead-lettered; 401/403/404 mean the endpoint refuses this worker
(bad key, wrong model or URL), so later requests fail at once without being sent; their
inputs are reported retryable (fix the configuration, then replay).

A budget that holds from the first request: with a spend cap (this worker's share of the
run budget), a request is sent only if the bill so far plus an *upper bound* of every
request in flight, its own included, stays within the cap (:class:`tiering.pricing.
SpendGuard`); the bound is the inputs' UTF-8 bytes, which no tokenizer exceeds, so a
provider that counts more than our estimate cannot push billed spend past the cap. Near
the cap a request waits for the replies in flight, then is split by document, and only a
document that cannot fit even alone is refused (``over_budget``); once one input of a
group is refused, the group's inputs not yet sent are refused too (a document is embedded
whole or not at all). Chunks of a document sent in an earlier request are billed even if
a later chunk fails or is refused; those tokens stay in ``billed_tokens`` and the cost.

Billing of failed requests: a request that got an error status or a malformed reply is
taken as unbilled and gives its spend reservation back. A request that timed out may still
have been served and billed after the client gave up, so its reservation (the upper bound)
is kept as spent; it is not counted in ``billed_tokens`` or the cost, only in
``ApiCallStats.timed_out_est_tokens``. Replies without ``usage`` are charged at the
estimate and flagged (``EmbedOutcome.unmetered``, ``ApiCallStats.unmetered_tokens``).

Every 200 reply is handed, as it arrives, to the optional ``on_reply`` callback (the Beam
stage writes its vectors to the result cache and its bill to the spend ledger, so a killed
run pays again only for requests in flight).

Vendor exceptions and replies are mapped in one place, :mod:`beam_pipeline.api_calls`
(``classify``, ``parse_reply``), which also holds the records this module takes and gives.
This module imports no Beam: ``embed_api.py`` adapts it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from beam_pipeline.api_calls import (
    ApiCallStats,
    ApiEmbedderConfig,
    ApiInput,
    ApiReply,
    CallFailure,
    EmbedOutcome,
    classify,
    headers_of,
    parse_reply,
)
from tiering.breaker import BreakerState, CircuitBreaker
from tiering.chunking import token_upper_bound
from tiering.packing import RequestLimits, pack_grouped
from tiering.pricing import SpendGuard, apportion
from tiering.ratelimits import SlidingWindow, WindowTicket, parse_rate_limit_headers

__all__ = [  # the records live in beam_pipeline.api_calls; kept importable from here
    "ApiEmbedderConfig",
    "ApiInput",
    "ApiReply",
    "CallFailure",
    "ApiCallStats",
    "EmbedOutcome",
    "ApiEmbedder",
]

_log = logging.getLogger(__name__)
_RESERVE_MARGIN = 1.03  # on top of the highest billed/estimated ratio seen, for requests in flight
_POLL_S = 1.0  # longest sleep between re-checks while waiting on replies in flight
_LOG_WAITS_OVER_S = 5.0


@dataclass
class _Job:
    """One packed request through its attempts."""

    idxs: tuple[int, ...]
    tokens: int
    bound: int
    started: float
    failures: int = 0
    throttled: int = 0
    token_refusals: int = 0
    probing: bool = False
    """The last attempt was the breaker's half-open trial."""
    reserved: bool = False
    breaker_waited_s: float = 0.0


def _split_by_group(inputs: Sequence[ApiInput], idxs: Sequence[int]) -> list[tuple[int, ...]]:
    """Two halves of a request that keep every group whole; [] when it is one group."""
    order: list[int | None] = []
    for i in idxs:
        group = inputs[i].group if inputs[i].group is not None else -1 - i
        if group not in order:
            order.append(group)
    if len(order) < 2:
        return []
    first = set(order[: len(order) // 2])

    def group_of(i: int) -> int | None:
        return inputs[i].group if inputs[i].group is not None else -1 - i

    return [tuple(i for i in idxs if group_of(i) in first),
            tuple(i for i in idxs if group_of(i) not in first)]


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
        on_reply: Callable[[ApiReply], None] | None = None,
    ) -> None:
        self.config = config
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_reply = on_reply
        self.breaker = CircuitBreaker(
            config.breaker_failure_threshold, config.breaker_reset_after_s, clock,
            on_transition=self._breaker_moved,
        )
        self.spend = SpendGuard(config.spend_cap_usd, config.price)
        self._rpm = SlidingWindow(config.requests_per_minute, config.window_s)
        self._tpm = SlidingWindow(config.tokens_per_minute, config.window_s)
        self._ratio = 0.0  # highest billed/estimated ratio of a reply so far; 0 = none yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refused: CallFailure | None = None
        self._warned_limit = False
        self._last_wait_log = -math.inf
        self._stats: ApiCallStats | None = None  # the running call's, for transition counts
        self._sem: asyncio.Semaphore | None = None
        self._admission: asyncio.Lock | None = None
        self._probe: asyncio.Lock | None = None
        self._calibrated: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def _ensure_async_parts(self) -> None:
        if self._sem is not None:
            return
        self._sem = asyncio.Semaphore(self.config.max_in_flight)
        self._admission = asyncio.Lock()
        self._probe = asyncio.Lock()
        self._calibrated = asyncio.Event()
        self._changed = asyncio.Event()
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

    @property
    def tokens_per_minute(self) -> float:
        """The token limit in force: the configured one, or the provider's if lower."""
        return self._tpm.limit

    # -- embedding -----------------------------------------------------------------------
    async def aembed(self, inputs: Sequence[ApiInput]) -> EmbedOutcome:
        """Embed ``inputs``; every index ends in exactly one field of the outcome."""
        self._ensure_async_parts()
        assert self._calibrated is not None
        outcome = EmbedOutcome()
        self._stats = outcome.stats
        todo = list(range(len(inputs)))
        if not self._calibrated.is_set():
            # The first request is the probe: small enough by its upper bound that it fits
            # the token share however the provider counts; its reply sets the ratio the
            # rest is packed with.
            probe = self._probe_request(inputs)
            if probe:
                running = asyncio.ensure_future(self._run_request(inputs, probe, outcome))
                answered = asyncio.ensure_future(self._calibrated.wait())
                await asyncio.wait({running, answered}, return_when=asyncio.FIRST_COMPLETED)
                answered.cancel()
                sent = set(probe)
                todo = [i for i in todo if i not in sent]
                await asyncio.gather(running, *(self._run_request(inputs, idxs, outcome)
                                                for idxs in self._pack(inputs, todo, outcome)))
                outcome.stats.breaker_opened = self.breaker.times_opened
                return outcome
        await asyncio.gather(*(self._run_request(inputs, idxs, outcome)
                               for idxs in self._pack(inputs, todo, outcome)))
        outcome.stats.breaker_opened = self.breaker.times_opened
        return outcome

    def _pack(self, inputs: Sequence[ApiInput], idxs: Sequence[int],
              outcome: EmbedOutcome) -> tuple[tuple[int, ...], ...]:
        """Requests for ``idxs`` at today's limits; inputs too long fail here, unsent."""
        groups = _groups_of(inputs)
        packing = pack_grouped([inputs[i].est_tokens for i in idxs], [groups[i] for i in idxs],
                               self._request_limits())
        for k in packing.oversized:
            outcome.failures[idxs[k]] = self._too_long(inputs[idxs[k]])
        return tuple(tuple(idxs[k] for k in request) for request in packing.requests)

    def _probe_request(self, inputs: Sequence[ApiInput]) -> tuple[int, ...]:
        """The first documents whose upper bound fits one request's token share."""
        budget = self.config.max_request_share * self._tpm.limit
        first = self._pack(inputs, range(len(inputs)), EmbedOutcome())
        if not first:
            return ()
        chosen: list[int] = []
        for i in first[0]:
            if chosen and (sum(token_upper_bound(inputs[j].text) for j in chosen)
                           + token_upper_bound(inputs[i].text) > budget):
                break
            chosen.append(i)
        groups = {inputs[i].group for i in chosen} - {None}
        whole = [i for i in first[0] if i in chosen or inputs[i].group in groups]
        return tuple(whole)

    def _request_limits(self) -> RequestLimits:
        """Per-request limits now: the model's, and at most ``max_request_share`` of the
        token limit in force over the highest billed/estimated ratio seen."""
        ratio = max(1.0, self._ratio) * _RESERVE_MARGIN
        share = int(self.config.max_request_share * self._tpm.limit / ratio)
        tokens = max(1, min(self.config.limits.max_tokens, share))
        return RequestLimits(self.config.limits.max_inputs, tokens, self.max_tokens_per_input)

    @property
    def max_tokens_per_input(self) -> int:
        """The largest input this embedder will send: chunk documents to this."""
        return self.config.max_tokens_per_input

    def _too_long(self, item: ApiInput) -> CallFailure:
        return CallFailure(
            "too_long", "InputTooLong",
            f"input of ~{item.est_tokens} estimated tokens is over the per-input limit "
            f"{self.max_tokens_per_input} and was not sent; chunk it to the model's limit",
            False, False,
        )

    async def _run_request(
        self, inputs: Sequence[ApiInput], idxs: Sequence[int], outcome: EmbedOutcome
    ) -> None:
        job = _Job(tuple(idxs), sum(inputs[i].est_tokens for i in idxs),
                   sum(token_upper_bound(inputs[i].text) for i in idxs), self._clock())
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
            if failure.status in ("too_large", "timeout") and len(job.idxs) > 1:
                # Too large for the provider's limit, or to be answered in time: resending
                # it unchanged would fail the same way, so halve it.
                if failure.status == "too_large":
                    outcome.stats.size_splits += 1
                await self._split(inputs, job, outcome)
                return
            delay = self._next_delay(job, failure)
            if delay is None:
                self._fail(job, failure, outcome)
                return
            outcome.stats.retries += 1
            if failure.status == "429":
                self._log_wait(f"a 429 ({failure.limit_type or 'limit'}); retrying one request", delay)
            await self._sleep(delay)

    def _next_delay(self, job: _Job, failure: CallFailure) -> float | None:
        """The wait before the next attempt, or None when this request has had enough."""
        throttled = failure.status == "429"
        if job.probing and failure.counts_for_breaker:
            # The breaker's trial failed: the endpoint is still down, which says nothing
            # about this request. Back to waiting for the breaker (bounded by its own wait
            # limit and by max_total_s), without using up the request's attempts.
            elapsed = self._clock() - job.started
            return 0.0 if elapsed <= self.config.backoff.max_total_s else None
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
        if self._refused is not None:
            return self._refused
        if not job.reserved:
            if not self._drop_refused_groups(inputs, job, outcome):
                return None
            if not await self._reserve_budget(inputs, job, outcome):
                return None
        holds_probe = await self._enter_probe_gate()
        try:
            return await self._attempt(inputs, job, outcome)
        finally:
            if holds_probe:
                assert self._probe is not None
                self._probe.release()

    async def _enter_probe_gate(self) -> bool:
        """Until the provider has told us where its windows stand, one request at a time.

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
        """One try: wait for the breaker, for room in the provider's windows and for a slot
        among the requests in flight, then send. A request that finds the breaker open at
        the last moment goes back to waiting for it; one that finds the endpoint refusing
        this worker (401/403/404 on another request) fails without being sent."""
        assert self._sem is not None
        while True:
            if self._refused is not None:
                return self._refused
            if not await self._wait_for_breaker(job, outcome):
                return None
            tickets = await self._wait_for_capacity(job, outcome.stats)
            async with self._sem:
                if self._refused is None and self.breaker.allow():
                    job.probing = self.breaker.trial_in_flight
                    return await self._send(inputs, job, tickets, outcome)
            self._cancel(tickets)

    # -- breaker -------------------------------------------------------------------------
    async def _wait_for_breaker(self, job: _Job, outcome: EmbedOutcome) -> bool:
        """Wait while the breaker is open (or its probe is out), at most
        ``breaker_max_wait_s`` in all for this request; False: short-circuited."""
        while not self._breaker_lets_through():
            left = self.config.breaker_max_wait_s - job.breaker_waited_s
            if left <= 0:
                outcome.short_circuited.update(job.idxs)
                return False
            pause = self.breaker.seconds_until_trial() or _POLL_S
            started = self._clock()
            await self._await_change(min(pause, left))
            waited = self._clock() - started
            job.breaker_waited_s += waited
            outcome.stats.breaker_wait_s += waited
        return True

    def _breaker_lets_through(self) -> bool:
        state = self.breaker.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self.breaker.trial_in_flight)

    def _breaker_moved(self, old: BreakerState, new: BreakerState) -> None:
        if self._stats is not None:
            self._stats.breaker_transitions[f"{old.label}->{new.label}"] += 1
        log = _log.warning if new is BreakerState.OPEN else _log.info
        what = {
            BreakerState.OPEN: f"no requests for {self.config.breaker_reset_after_s:g}s; requests "
            f"wait up to {self.config.breaker_max_wait_s:g}s each for it, then go to "
            "api.breaker.on_open",
            BreakerState.HALF_OPEN: "sending one probe request",
            BreakerState.CLOSED: "the endpoint answers again; waiting requests go on",
        }[new]
        log("API %s (%s): circuit breaker %s -> %s: %s", self.config.model,
            self.config.base_url or "OpenAI", old.label, new.label, what)

    # -- budget --------------------------------------------------------------------------
    async def _reserve_budget(self, inputs: Sequence[ApiInput], job: _Job, outcome: EmbedOutcome) -> bool:
        """Reserve the request's upper bound within the spend cap. Near the cap: wait for
        replies in flight, else split by document, else refuse; False when this job ends here."""
        while not self.spend.try_reserve(job.bound):
            if self.spend.could_ever_fit(job.bound) and self.spend.in_flight:
                await self._await_change(_POLL_S)  # their bills will be below their bounds
                continue
            halves = _split_by_group(inputs, job.idxs)
            if halves:
                outcome.stats.budget_splits += 1
                await asyncio.gather(*(self._run_request(inputs, h, outcome) for h in halves))
            else:
                self._over_budget(job.idxs, outcome)
            return False
        job.reserved = True
        return True

    def _release(self, job: _Job) -> None:
        if job.reserved:
            self.spend.release(job.bound)
            job.reserved = False
            self._notify()

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
            job.bound = sum(token_upper_bound(inputs[i].text) for i in job.idxs)
        return bool(job.idxs)

    # -- capacity ------------------------------------------------------------------------
    def _reserved_tokens(self, job: _Job) -> float:
        """What a request in flight counts in the token window: its estimate times the
        highest ratio seen (1 before any reply), plus a margin; never past the limit."""
        ratio = (self._ratio or 1.0) * _RESERVE_MARGIN
        return min(self._tpm.limit, math.ceil(job.tokens * ratio))

    async def _wait_for_capacity(
        self, job: _Job, stats: ApiCallStats
    ) -> tuple[WindowTicket, WindowTicket]:
        """Wait, first come first served, until the request fits both windows; take them."""
        assert self._admission is not None
        started = self._clock()
        async with self._admission:
            while True:
                amount = self._reserved_tokens(job)
                now = self._clock()
                waits = (self._rpm.wait_s(1, now), self._tpm.wait_s(amount, now))
                if waits == (0.0, 0.0):
                    break
                known = [w for w in waits if w is not None]
                self._log_wait("the provider's rate-limit window", max(known, default=0.0))
                timeout = max(known) if None not in waits else min(_POLL_S, max(known, default=_POLL_S))
                await self._await_change(max(timeout, 0.001))
            tickets = (self._rpm.take(1), self._tpm.take(amount))
        stats.rate_limit_wait_s += self._clock() - started
        return tickets

    def _cancel(self, tickets: tuple[WindowTicket, WindowTicket]) -> None:
        self._rpm.cancel(tickets[0])
        self._tpm.cancel(tickets[1])
        self._notify()

    def _settle(self, tickets: tuple[WindowTicket, WindowTicket], tokens: float) -> None:
        now = self._clock()
        self._rpm.settle(tickets[0], 1, now)
        self._tpm.settle(tickets[1], tokens, now)
        self._notify()

    def _notify(self) -> None:
        """Wake every task waiting for the windows, the budget or the breaker to change."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _await_change(self, timeout: float) -> None:
        assert self._changed is not None
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            pass

    def _log_wait(self, why: str, seconds: float) -> None:
        now = self._clock()
        if seconds >= _LOG_WAITS_OVER_S and now - self._last_wait_log >= _LOG_WAITS_OVER_S:
            self._last_wait_log = now
            _log.info("API %s: waiting %.1fs for %s (%s of %s tokens in the window)",
                      self.config.model, seconds, why, f"{self._tpm.used(now):,.0f}",
                      f"{self._tpm.limit:,.0f}")

    # -- one HTTP call -------------------------------------------------------------------
    async def _send(
        self, inputs: Sequence[ApiInput], job: _Job, tickets: tuple[WindowTicket, WindowTicket],
        outcome: EmbedOutcome,
    ) -> CallFailure | None:
        assert self._client is not None
        stats = outcome.stats
        t0 = self._clock()
        try:
            raw = await self._client.embeddings.with_raw_response.create(**self._body(inputs, job))
            reply, vectors = parse_reply(raw, len(job.idxs))
        except Exception as exc:  # noqa: BLE001 - classified; unknown types are terminal
            return self._on_failed_reply(exc, job, tickets, stats)
        finally:
            stats.latencies_s.append(self._clock() - t0)
        self._on_success(inputs, job, tickets, reply, vectors, dict(raw.headers), outcome)
        return None

    def _body(self, inputs: Sequence[ApiInput], job: _Job) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.config.model, "input": [inputs[i].text for i in job.idxs]}
        if self.config.dimensions:
            body["dimensions"] = self.config.dimensions
        if self.config.input_type:
            body["extra_body"] = {"input_type": self.config.input_type}
        return body

    def _on_failed_reply(
        self, exc: Exception, job: _Job, tickets: tuple[WindowTicket, WindowTicket], stats: ApiCallStats
    ) -> CallFailure:
        failure = classify(exc, self.config.api_key)
        stats.requests_by_status[failure.status] += 1
        headers = headers_of(exc)
        if failure.status in ("timeout", "malformed"):
            # The provider may have admitted (a timeout: and billed) it: count it as sent.
            self._settle(tickets, self._reserved_tokens(job))
            if failure.status == "timeout":
                self._keep_timed_out_reservation(job, stats)
        else:
            self._cancel(tickets)  # an error status or no connection: nothing was admitted
        if failure.status.isdigit():
            self._follow(headers, stats, answered=not failure.status.startswith("5"))
        if failure.counts_for_breaker:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()  # a 429 or a 4xx proves the endpoint alive
        if failure.status == "429" and failure.limit_type != "requests":
            failure = self._size_refusal(job, failure, headers)
        if failure.endpoint_refused:
            self._refused = failure
        self._notify()
        return failure

    def _size_refusal(self, job: _Job, failure: CallFailure, headers: Mapping[str, str]) -> CallFailure:
        """A 429 on tokens is a refusal for size when the request may be larger than the
        provider's whole token limit (see the module docstring); else it is pacing."""
        job.token_refusals += 1
        limit = parse_rate_limit_headers(headers).limit_tokens or self._tpm.limit
        provider_guess = job.tokens * max(1.0, self._ratio)
        possibly_too_large = job.bound > limit
        surely_too_large = provider_guess > limit
        if not possibly_too_large:
            return failure
        if len(job.idxs) > 1:
            return replace(failure, status="too_large", error_type="RequestTooLarge")
        if surely_too_large or job.token_refusals > 1:
            return replace(
                failure, status="too_large", error_type="InputTooLargeForRateLimit", retryable=False,
                message=f"{failure.message}; one input of ~{job.tokens} estimated tokens (up to "
                f"{job.bound}) cannot fit the provider's limit of {limit} tokens per minute: "
                "raise api.tokens_per_minute to your real limit or lower the model's "
                "max_tokens_per_input, then replay")
        return failure

    def _keep_timed_out_reservation(self, job: _Job, stats: ApiCallStats) -> None:
        """The provider may have served (and billed) a request the client gave up on: the
        spend guard keeps its upper bound as spent; stats do not call it billed."""
        stats.timed_out_est_tokens += job.tokens
        if job.reserved:
            self.spend.settle(job.bound, job.bound)
            job.reserved = False

    def _on_success(
        self,
        inputs: Sequence[ApiInput],
        job: _Job,
        tickets: tuple[WindowTicket, WindowTicket],
        reply: Any,
        vectors: list[list[float]],
        headers: Mapping[str, str],
        outcome: EmbedOutcome,
    ) -> None:
        stats = outcome.stats
        stats.requests_by_status["200"] += 1
        stats.sent_est_tokens += job.tokens
        self.breaker.record_success()
        billed = self._billed(reply, stats)
        unmetered = billed is None
        if billed is None:  # no usage: charge the estimate, flagged as such
            stats.unmetered_tokens += job.tokens
            outcome.unmetered.update(job.idxs)
            billed = job.tokens
        elif job.tokens > 0:
            self._ratio = max(self._ratio, billed / job.tokens)
        self._settle(tickets, billed if not unmetered else self._reserved_tokens(job))
        self._follow(headers, stats, answered=True)
        if job.reserved:
            self.spend.settle(job.bound, billed)
            job.reserved = False
        shares = apportion(billed, [inputs[i].est_tokens for i in job.idxs])
        for pos, i in enumerate(job.idxs):
            outcome.vectors[i] = vectors[pos]
            outcome.billed_tokens[i] = shares[pos]
        self._notify()  # the bill replaced the bound: requests waiting for budget may go
        self._hand_over(ApiReply(job.idxs, tuple(vectors), tuple(shares), unmetered, stats))

    def _hand_over(self, reply: ApiReply) -> None:
        if self._on_reply is None:
            return
        try:
            self._on_reply(reply)
        except Exception as exc:  # noqa: BLE001 - the vectors are in the outcome either way
            _log.warning("API %s: reply of %d inputs not recorded (result cache / ledger): %s: %s",
                         self.config.model, len(reply.idxs), type(exc).__name__, exc)

    @staticmethod
    def _billed(reply: Any, stats: ApiCallStats) -> int | None:
        """The reply's billed tokens (added to stats), or None when it has no usage."""
        usage = getattr(reply, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        if not isinstance(prompt_tokens, int):
            return None
        stats.billed_tokens += prompt_tokens
        return prompt_tokens

    def _follow(self, headers: Mapping[str, str], stats: ApiCallStats, *, answered: bool) -> None:
        """Follow the provider's own view of its windows (see the module docstring).

        The first reply that says where the windows stand (or any answer but a 5xx, which
        may come from a proxy in front of the provider) ends the one-at-a-time start."""
        assert self._calibrated is not None
        state = parse_rate_limit_headers(headers)
        self._adopt_provider_limits(state.limit_tokens, state.limit_requests)
        now = self._clock()
        if state.remaining_tokens is not None:
            stats.held_tokens += self._tpm.follow(state.remaining_tokens, state.reset_tokens_s, now)
        if state.remaining_requests is not None:
            self._rpm.follow(state.remaining_requests, state.reset_requests_s, now)
        if state.known or answered:
            self._calibrated.set()

    def _adopt_provider_limits(self, limit_tokens: int | None, limit_requests: int | None) -> None:
        lower_tokens = limit_tokens is not None and 0 < limit_tokens < self._tpm.limit
        lower_requests = limit_requests is not None and 0 < limit_requests < self._rpm.limit
        if lower_tokens:
            self._tpm.set_limit(limit_tokens)  # type: ignore[arg-type]
        if lower_requests:
            self._rpm.set_limit(limit_requests)  # type: ignore[arg-type]
        if (lower_tokens or lower_requests) and not self._warned_limit:
            self._warned_limit = True
            _log.warning(
                "API %s: configured %d RPM / %d TPM exceed the provider's limits %s RPM / %s TPM; "
                "pacing to the provider's. Lower api.requests_per_minute / api.tokens_per_minute.",
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
        """Send the request again as two halves, documents kept whole where possible."""
        self._release(job)
        halves = _split_by_group(inputs, job.idxs)
        if not halves:
            mid = len(job.idxs) // 2
            halves = [job.idxs[:mid], job.idxs[mid:]]
        await asyncio.gather(*(self._run_request(inputs, h, outcome) for h in halves))

    @staticmethod
    def _fail(job: _Job, failure: CallFailure, outcome: EmbedOutcome) -> None:
        for i in job.idxs:
            outcome.failures[i] = failure


def _groups_of(inputs: Sequence[ApiInput]) -> list[int]:
    """Each input's group as an int; an input without one is a group of its own."""
    offset = 1 + max((i.group for i in inputs if i.group is not None), default=-1)
    return [i.group if i.group is not None else offset + pos for pos, i in enumerate(inputs)]
