"""ApiEmbedder against the fault-injecting OpenAI-compatible server, through the real SDK.

Each test states a promise of the API tier (issue 3) and checks it on what the server saw
and billed: 429 storms waited out, Retry-After obeyed (measured), 400s dead-lettered
without retry, a dead endpoint short-circuited, cost equal to the bill, no over-limit input.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from typing import Any

import httpx
import openai
import pytest

from beam_pipeline.api_embedder import ApiEmbedder, ApiEmbedderConfig, ApiInput, EmbedOutcome
from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig, count_tokens
from tiering.backoff import BackoffPolicy
from tiering.chunking import estimate_tokens
from tiering.packing import RequestLimits
from tiering.pricing import Price, exact_cost_usd

MODEL = "text-embedding-3-small"
FAST = BackoffPolicy(base_s=0.01, cap_s=0.05, max_attempts=6, max_total_s=20.0,
                     retry_after_jitter_s=0.02)


def make_config(server: FakeOpenAIServer, **changes: Any) -> ApiEmbedderConfig:
    config = ApiEmbedderConfig(
        base_url=server.base_url, api_key="test", model=MODEL, provider="fake",
        limits=RequestLimits(2048, 300_000, 8192), requests_per_minute=6000,
        tokens_per_minute=1_000_000, max_in_flight=4, timeout_s=5.0, backoff=FAST,
        breaker_failure_threshold=5, breaker_reset_after_s=30.0,
    )
    return replace(config, **changes)


def inputs_of(texts: list[str]) -> list[ApiInput]:
    return [ApiInput(t, estimate_tokens(t)) for t in texts]


def texts(n: int, words: int = 6) -> list[str]:
    return [" ".join(f"listing{i} garden kitchen"[: 9 + k % 20] for k in range(words)) for i in range(n)]


def run(config: ApiEmbedderConfig, items: list[ApiInput], **kwargs: Any) -> EmbedOutcome:
    embedder = ApiEmbedder(config, **kwargs)
    try:
        return embedder.embed(items)
    finally:
        embedder.close()


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(FakeServerConfig(seed=3)) as srv:
        yield srv


class TimedClient:
    """The real async SDK client, recording when each request left and how it ended."""

    def __init__(self, base_url: str) -> None:
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0)
        self.embeddings = self
        self.with_raw_response = self
        self.sent: list[float] = []
        self.ended: list[tuple[float, int]] = []

    async def create(self, **body: Any) -> Any:
        self.sent.append(time.monotonic())
        try:
            raw = await self._client.embeddings.with_raw_response.create(**body)
        except openai.APIStatusError as exc:
            self.ended.append((time.monotonic(), exc.status_code))
            raise
        self.ended.append((time.monotonic(), 200))
        return raw

    async def close(self) -> None:
        await self._client.close()


# ---------------------------------------------------------------- rate limits


def test_429_storm_is_waited_out_and_every_document_lands(server: FakeOpenAIServer) -> None:
    server.configure(fail_next=[429] * 15, fault_retry_after_s=0.05)
    items = inputs_of(texts(40))
    # max_attempts=1: a 429 is pacing, not a failure, so it must not use up the attempts
    config = make_config(server, limits=RequestLimits(4, 300_000, 8192),
                         backoff=replace(FAST, max_attempts=1))

    outcome = run(config, items)

    assert sorted(outcome.vectors) == list(range(40)) and not outcome.failures
    stats = server.stats()
    assert stats.responses_by_status == {429: 15, 200: 10}
    assert stats.billed_inputs_by_model == {MODEL: 40}  # each document paid once
    assert outcome.stats.requests_by_status["429"] == 15


def test_retry_after_is_obeyed_by_every_request_of_the_worker(server: FakeOpenAIServer) -> None:
    server.configure(fail_next=[429], fault_retry_after_s=0.4)
    client = TimedClient(server.base_url)
    config = make_config(server, limits=RequestLimits(1, 300_000, 8192))

    outcome = run(config, inputs_of(texts(3)), client=client)

    assert len(outcome.vectors) == 3
    throttled_at = next(t for t, status in client.ended if status == 429)
    later = [t - throttled_at for t in client.sent if t > throttled_at]
    assert len(later) == 3  # the retry and both requests that were still waiting
    assert min(later) >= 0.4 - 0.01  # nobody came back before the server said
    assert max(later) <= 0.4 + 0.02 + 0.3  # the retry-after, its jitter, and some slack


def test_provider_bucket_partly_used_elsewhere_is_not_overrun() -> None:
    # A neighbour left ~1,000 of 60,000 tokens; our local bucket starts full. The first
    # reply's x-ratelimit-remaining-tokens must hold the rest back: no 429 at all, and the
    # wait is the deficit at the refill rate (1,000 tokens/s), not the 60 s full reset.
    with FakeOpenAIServer(FakeServerConfig(tpm=60_000, rpm=6000)) as srv:
        neighbour = openai.OpenAI(base_url=srv.base_url, api_key="n", max_retries=0)
        neighbour.embeddings.create(model=MODEL, input=["w " * 8000] * 7 + ["w " * 3000])
        neighbour.close()
        items = inputs_of([" ".join(["word"] * 99)] * 30)  # 30 x 99 tokens, estimate = bill
        config = make_config(srv, limits=RequestLimits(2, 300_000, 8192), tokens_per_minute=60_000)

        started = time.monotonic()
        outcome = run(config, items)
        elapsed = time.monotonic() - started

        assert len(outcome.vectors) == 30
        assert srv.stats().rate_limited == {} and 429 not in srv.stats().responses_by_status
        assert elapsed < 4.5  # ~2 s of refill for 2,970 tokens; a full reset would be 60 s


def test_estimates_above_the_bill_are_refunded_so_the_token_limit_is_used() -> None:
    # Long words: our estimate is ~2x what the server bills. Without refunds the local
    # bucket would think 12,000 TPM were spent after ~6,000 billed tokens and stall.
    with FakeOpenAIServer(FakeServerConfig(tpm=12_000)) as srv:
        text = " ".join(["extraordinarily"] * 100)  # 100 billed tokens, 300 estimated
        items = [ApiInput(text, estimate_tokens(text))] * 100
        assert items[0].est_tokens >= 2 * count_tokens(text)
        config = make_config(srv, limits=RequestLimits(4, 300_000, 8192), tokens_per_minute=12_000)

        started = time.monotonic()
        outcome = run(config, items)

        assert len(outcome.vectors) == 100 and srv.stats().billed_tokens_total == 10_000
        assert time.monotonic() - started < 3.0  # 10,000 billed fit the full 12,000 bucket


# ---------------------------------------------------------------- one retry layer


def test_sdk_retries_are_off_so_one_failed_attempt_is_one_request(server: FakeOpenAIServer) -> None:
    server.configure(fail_next=[500])
    config = make_config(server, backoff=replace(FAST, max_attempts=1))

    outcome = run(config, inputs_of(texts(1)))

    assert server.stats().requests_total == 1
    assert outcome.failures[0].status == "500" and outcome.failures[0].retryable


def test_5xx_timeouts_and_malformed_replies_are_retried_until_each_document_lands() -> None:
    cfg = FakeServerConfig(seed=11, error_rate=0.2, timeout_rate=0.1, hang_s=1.0, malformed_rate=0.1)
    with FakeOpenAIServer(cfg) as srv:
        config = make_config(srv, limits=RequestLimits(3, 300_000, 8192), timeout_s=0.3,
                             breaker_failure_threshold=50)
        outcome = run(config, inputs_of(texts(60)))

        assert sorted(outcome.vectors) == list(range(60)) and not outcome.failures
        seen = outcome.stats.requests_by_status
        assert seen["timeout"] > 0 and seen["malformed"] > 0
        assert sum(seen[s] for s in ("500", "502", "503")) > 0
        assert srv.stats().billed_inputs_by_model == {MODEL: 60}


def test_200_without_data_is_retried_as_malformed_until_each_document_lands() -> None:
    with FakeOpenAIServer(FakeServerConfig(seed=4, missing_data_rate=0.4)) as srv:
        config = make_config(srv, limits=RequestLimits(3, 300_000, 8192), breaker_failure_threshold=50,
                             backoff=replace(FAST, max_attempts=20))
        outcome = run(config, inputs_of(texts(30)))

        assert sorted(outcome.vectors) == list(range(30)) and not outcome.failures
        missing = srv.stats().injected_faults["missing_data"]
        assert outcome.stats.requests_by_status["malformed"] == missing > 0
        assert srv.stats().billed_inputs_by_model == {MODEL: 30}


def test_200_without_data_every_time_fails_retryable_instead_of_crashing(server: FakeOpenAIServer) -> None:
    server.configure(missing_data_rate=1.0)
    config = make_config(server, breaker_failure_threshold=50, backoff=replace(FAST, max_attempts=2))

    outcome = run(config, inputs_of(texts(4)))

    assert set(outcome.failures) == {0, 1, 2, 3}
    assert {(f.error_type, f.retryable) for f in outcome.failures.values()} == {("MalformedReply", True)}


def test_retries_stop_after_max_attempts_and_report_a_retryable_failure(server: FakeOpenAIServer) -> None:
    server.configure(dead=True)
    config = make_config(server, limits=RequestLimits(1, 300_000, 8192), breaker_failure_threshold=100,
                         backoff=replace(FAST, max_attempts=3))

    outcome = run(config, inputs_of(texts(4)))

    assert server.stats().requests_total == 4 * 3
    assert {f.status for f in outcome.failures.values()} == {"503"}
    assert all(f.retryable for f in outcome.failures.values())


# ---------------------------------------------------------------- terminal errors


def test_400_on_a_single_document_is_terminal_and_sent_once(server: FakeOpenAIServer) -> None:
    outcome = run(make_config(server), inputs_of(["a listing with __POISON__ inside"]))

    failure = outcome.failures[0]
    assert failure.status == "400" and not failure.retryable
    assert server.stats().requests_total == 1 and outcome.stats.retries == 0


def test_400_in_a_packed_request_dead_letters_only_the_offending_input(server: FakeOpenAIServer) -> None:
    items = inputs_of(texts(16))
    items[11] = ApiInput("bad __POISON__ input", 4)

    outcome = run(make_config(server), items)

    assert set(outcome.failures) == {11} and outcome.failures[11].status == "400"
    assert sorted(outcome.vectors) == [i for i in range(16) if i != 11]
    assert outcome.stats.retries == 0
    # bisection: 16 -> 8 -> 4 -> 2 -> 1 holds the poison, so it is sent 5 times, never twice alike
    assert server.stats().injected_faults["poison"] == 5


def test_400_about_the_request_not_the_input_is_not_bisected(server: FakeOpenAIServer) -> None:
    outcome = run(make_config(server, dimensions=10_000), inputs_of(texts(16)))

    assert len(outcome.failures) == 16 and server.stats().requests_total == 1


def test_401_stops_calling_the_endpoint_and_leaves_documents_retryable_by_replay(
    server: FakeOpenAIServer,
) -> None:
    server.configure(fail_next=[401])
    outcome = run(make_config(server, limits=RequestLimits(1, 300_000, 8192)), inputs_of(texts(5)))

    assert {f.status for f in outcome.failures.values()} == {"401"} and len(outcome.failures) == 5
    assert server.stats().requests_total == 1 and outcome.stats.retries == 0
    # the documents are fine: fix the key/model/endpoint, then `tierembed replay` (retryable only)
    assert all(f.retryable and "replay" in f.message and "api key" in f.message
               for f in outcome.failures.values())


class RaisingClient:
    """A client seam whose create raises what it is given (a key-echoing 401, a bug)."""

    def __init__(self, exc: Exception) -> None:
        self.embeddings = self
        self.with_raw_response = self
        self.exc = exc

    async def create(self, **body: Any) -> Any:
        raise self.exc

    async def close(self) -> None:
        return None


def test_provider_error_text_is_scrubbed_of_api_keys(server: FakeOpenAIServer) -> None:
    key = "sk-proj-SECRETvalue123456"
    request = httpx.Request("POST", server.base_url + "/embeddings")
    exc = openai.AuthenticationError(
        f"Incorrect API key provided: {key}; also seen sk-abc*****wxyz.",
        response=httpx.Response(401, request=request), body=None)

    outcome = run(make_config(server, api_key=key), inputs_of(texts(1)), client=RaisingClient(exc))

    message = outcome.failures[0].message
    assert key not in message and "SECRET" not in message and "wxyz" not in message
    assert "sk-***" in message


def test_an_unknown_exception_is_a_terminal_failure_not_a_crash(server: FakeOpenAIServer) -> None:
    outcome = run(make_config(server), inputs_of(texts(3)), client=RaisingClient(RuntimeError("boom")))

    assert set(outcome.failures) == {0, 1, 2}
    failure = outcome.failures[0]
    assert failure.error_type == "RuntimeError" and not failure.retryable and "boom" in failure.message


# ---------------------------------------------------------------- breaker


def test_dead_endpoint_trips_the_breaker_and_the_rest_is_short_circuited(server: FakeOpenAIServer) -> None:
    server.configure(dead=True)
    embedder = ApiEmbedder(make_config(server, limits=RequestLimits(1, 300_000, 8192),
                                       breaker_failure_threshold=3))
    try:
        outcome = embedder.embed(inputs_of(texts(20)))
    finally:
        embedder.close()

    assert server.stats().requests_total == 3  # then it stopped calling
    assert outcome.short_circuited == set(range(20)) and not outcome.failures
    assert outcome.stats.breaker_opened == 1


def test_breaker_half_open_trial_closes_it_when_the_endpoint_recovers(server: FakeOpenAIServer) -> None:
    now = [0.0]
    config = make_config(server, limits=RequestLimits(1, 300_000, 8192), breaker_failure_threshold=1,
                         breaker_reset_after_s=10.0, backoff=replace(FAST, max_attempts=1))
    embedder = ApiEmbedder(config, clock=lambda: now[0])
    try:
        server.configure(dead=True)
        first = embedder.embed(inputs_of(texts(3)))
        server.configure(dead=False)
        now[0] += 10.0
        second = embedder.embed(inputs_of(texts(3)))
    finally:
        embedder.close()

    assert len(first.failures) + len(first.short_circuited) == 3 and first.short_circuited
    assert sorted(second.vectors) == [0, 1, 2]


# ---------------------------------------------------------------- cost and limits


def test_cost_equals_the_servers_billed_tokens_times_price_exactly() -> None:
    with FakeOpenAIServer(FakeServerConfig(seed=5, error_rate=0.3)) as srv:
        items = inputs_of([f"Listing {i}: " + "renovated kitchen, garden; " * (i % 9 + 1) for i in range(50)])
        price = Price(MODEL, "0.13")
        config = make_config(srv, limits=RequestLimits(7, 300_000, 8192), breaker_failure_threshold=50)

        outcome = run(config, items)

        billed = srv.stats().billed_tokens_by_model[MODEL]
        assert billed == sum(count_tokens(i.text) for i in items)  # 5xx were not paid twice
        assert outcome.stats.billed_tokens == billed
        assert sum(outcome.billed_tokens.values()) == billed  # apportioned, whole tokens
        per_input = sum(exact_cost_usd(t, price) for t in outcome.billed_tokens.values())
        assert per_input == exact_cost_usd(billed, price) == Fraction(billed * 13, 100_000_000)
        assert outcome.stats.sent_est_tokens > billed  # estimates kept apart from the bill


def test_no_input_over_a_limit_is_ever_sent() -> None:
    limits = RequestLimits(max_inputs=5, max_tokens=60, max_tokens_per_input=20)
    fake = FakeServerConfig(max_inputs_per_request=5, max_tokens_per_request=60, max_tokens_per_input=20)
    with FakeOpenAIServer(fake) as srv:
        items = inputs_of([" ".join(["word"] * (1 + i % 20)) for i in range(80)])
        items.append(ApiInput(" ".join(["word"] * 21), 21))  # over the per-input limit

        outcome = run(make_config(srv, limits=limits), items)

        stats = srv.stats()
        assert 400 not in stats.responses_by_status
        assert stats.max_input_tokens_seen <= 20 and stats.max_inputs_seen <= 5
        assert stats.max_request_tokens_seen <= 60
        assert stats.max_request_tokens_seen >= 55  # and requests are filled close to the limit
        assert set(outcome.failures) == {80} and outcome.failures[80].error_type == "InputTooLong"
        assert sorted(outcome.vectors) == list(range(80))


def test_an_input_larger_than_the_whole_token_budget_is_refused_not_crashed(
    server: FakeOpenAIServer,
) -> None:
    # aiolimiter cannot grant more than its capacity: such an input could never be sent.
    items = inputs_of([" ".join(["word"] * 20), "short text"])

    outcome = run(make_config(server, tokens_per_minute=15), items)

    assert outcome.failures[0].error_type == "InputTooLong" and 1 in outcome.vectors
    assert server.stats().max_input_tokens_seen <= 15


# ---------------------------------------------------------------- spend cap


def test_spend_cap_keeps_requests_that_would_pass_it_from_being_sent(server: FakeOpenAIServer) -> None:
    price = Price(MODEL, "1000000")  # $1 per token keeps the arithmetic readable
    items = inputs_of([" ".join(["word"] * 10)] * 20)  # 10 tokens each, estimate = bill
    config = make_config(server, limits=RequestLimits(1, 300_000, 8192), spend_cap_usd=75.0, price=price)

    outcome = run(config, items)

    billed = server.stats().billed_tokens_total
    assert billed == 70 and len(outcome.vectors) == 7
    assert outcome.over_budget == set(range(20)) - set(outcome.vectors)
    assert outcome.stats.over_budget_inputs == 13


def test_breaker_half_open_trial_is_not_lost_when_the_spend_cap_refuses_it(
    server: FakeOpenAIServer,
) -> None:
    now = [0.0]
    config = make_config(server, limits=RequestLimits(1, 300_000, 8192), breaker_failure_threshold=1,
                         breaker_reset_after_s=10.0, backoff=replace(FAST, max_attempts=1),
                         spend_cap_usd=50.0, price=Price(MODEL, "1000000"))
    embedder = ApiEmbedder(config, clock=lambda: now[0])
    try:
        server.configure(dead=True)
        embedder.embed(inputs_of(texts(1)))  # opens the breaker, bills nothing
        server.configure(dead=False)
        now[0] += 10.0  # half-open: one trial may go
        too_dear = embedder.embed(inputs_of([" ".join(["word"] * 60)]))
        affordable = embedder.embed(inputs_of([" ".join(["word"] * 10)]))
    finally:
        embedder.close()

    assert too_dear.over_budget == {0} and not too_dear.short_circuited
    assert sorted(affordable.vectors) == [0]  # the trial was still there to take


def test_chunks_of_a_document_are_not_sent_after_another_chunk_was_refused_by_the_cap(
    server: FakeOpenAIServer,
) -> None:
    # One document in three chunks, one request each (max_inputs=1): 10 tokens fit the $20
    # cap, 30 do not, and 5 would fit but would be paid for and then thrown away.
    items = [ApiInput(" ".join(["word"] * n), n, group=0) for n in (10, 30, 5)]
    config = make_config(server, limits=RequestLimits(1, 300_000, 8192), spend_cap_usd=20.0,
                         price=Price(MODEL, "1000000"))

    outcome = run(config, items)

    assert sorted(outcome.vectors) == [0] and outcome.over_budget == {1, 2}
    assert server.stats().billed_tokens_total == 10 and outcome.stats.over_budget_inputs == 2


def test_chunks_of_a_document_share_a_request_when_they_fit(server: FakeOpenAIServer) -> None:
    items = [ApiInput("a b c", 10, group=0)] + [ApiInput("d e f", 10, group=1)] * 3
    outcome = run(make_config(server, limits=RequestLimits(10, 30, 30)), items)

    assert sorted(outcome.vectors) == [0, 1, 2, 3]
    assert server.stats().requests_total == 2 and server.stats().max_inputs_seen == 3


class NoUsageClient(TimedClient):
    """The real SDK, with ``usage`` taken out of every reply (as some compatible servers do)."""

    async def create(self, **body: Any) -> Any:
        raw = await super().create(**body)
        reply = raw.parse().model_copy(update={"usage": None})
        return type("Raw", (), {"parse": lambda _self: reply, "headers": raw.headers})()


def test_replies_without_usage_are_charged_at_the_estimate_and_flagged(server: FakeOpenAIServer) -> None:
    items = inputs_of(texts(4))
    config = make_config(server, limits=RequestLimits(2, 300_000, 8192))

    outcome = run(config, items, client=NoUsageClient(server.base_url))

    estimate = sum(i.est_tokens for i in items)
    assert outcome.unmetered == {0, 1, 2, 3} and outcome.stats.unmetered_tokens == estimate
    assert outcome.stats.billed_tokens == 0 and sum(outcome.billed_tokens.values()) == estimate


def test_a_timed_out_request_keeps_its_spend_reservation_but_is_not_counted_billed(
    server: FakeOpenAIServer,
) -> None:
    # The server answers (and bills) after the client gave up: the cap must assume it did.
    server.configure(latency_s=0.5)
    items = inputs_of([" ".join(["word"] * 10)])
    config = make_config(server, timeout_s=0.2, backoff=replace(FAST, max_attempts=1),
                         spend_cap_usd=1000.0, price=Price(MODEL, "1000000"))
    embedder = ApiEmbedder(config)
    try:
        outcome = embedder.embed(items)
    finally:
        embedder.close()

    assert outcome.failures[0].status == "timeout" and outcome.stats.billed_tokens == 0
    assert outcome.stats.timed_out_est_tokens == 10
    assert embedder.spend.billed_usd == 10 and embedder.spend.reserved_usd == 0


def test_request_too_slow_to_answer_is_halved_until_it_fits(server: FakeOpenAIServer) -> None:
    # The server needs 40 ms per input; the client waits 0.5 s: 32 inputs cannot finish,
    # 8 can. Retrying the same 32-input request would time out forever.
    server.configure(latency_per_input_s=0.04)
    items = inputs_of(texts(32))
    outcome = run(make_config(server, timeout_s=0.5, breaker_failure_threshold=50), items)
    assert outcome.failures == {} and not outcome.short_circuited
    assert sorted(outcome.vectors) == list(range(32))
    assert outcome.stats.requests_by_status["timeout"] >= 1
    assert server.stats().max_inputs_seen == 32
    assert sum(outcome.billed_tokens.values()) == server.stats().billed_tokens_total
