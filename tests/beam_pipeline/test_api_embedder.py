"""ApiEmbedder against the honest, hostile OpenAI double, through the real SDK.

Each test states a promise of the API tier (issues 3 and 11) and checks it on what the
server saw and billed. Every test that talks to the server runs against both directions
of estimate error: the provider counting 7% *above* our token estimate and 7% *below* it
(``server`` is parametrized), with true sliding windows and "Request too large" refusals.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from typing import Any

import httpx
import openai
import pytest

from beam_pipeline.api_embedder import ApiEmbedder, ApiEmbedderConfig, ApiInput, ApiReply, EmbedOutcome
from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig, billed_tokens
from tiering.backoff import BackoffPolicy
from tiering.chunking import estimate_tokens, token_upper_bound
from tiering.packing import RequestLimits
from tiering.pricing import Price, exact_cost_usd

MODEL = "text-embedding-3-small"
FAST = BackoffPolicy(base_s=0.01, cap_s=0.05, max_attempts=6, max_total_s=20.0,
                     retry_after_jitter_s=0.02)
DIRECTIONS = {"above": 1.07, "below": 0.93}  # the provider's count over our estimate
DOLLAR_A_TOKEN = Price(MODEL, "1000000")  # keeps budget arithmetic readable


def honest(direction: str, **changes: Any) -> FakeServerConfig:
    """The double counting ``direction`` of our estimate, plus ``changes``."""
    return FakeServerConfig(token_count="estimate", token_ratio=DIRECTIONS[direction], **changes)


@pytest.fixture(params=sorted(DIRECTIONS))
def direction(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(direction: str) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(honest(direction, seed=3)) as srv:
        yield srv


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


def bill(server: FakeOpenAIServer, items: list[ApiInput]) -> int:
    return sum(billed_tokens(i.text, server.config) for i in items)


def run(config: ApiEmbedderConfig, items: list[ApiInput], **kwargs: Any) -> EmbedOutcome:
    embedder = ApiEmbedder(config, **kwargs)
    try:
        return embedder.embed(items)
    finally:
        embedder.close()


class TimedClient:
    """The real async SDK client, recording when each request left, what it carried and
    how it ended."""

    def __init__(self, base_url: str) -> None:
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0)
        self.embeddings = self
        self.with_raw_response = self
        self.sent: list[float] = []
        self.bodies: list[str] = []
        self.ended: list[tuple[float, int]] = []

    async def create(self, **body: Any) -> Any:
        self.sent.append(time.monotonic())
        self.bodies.append(json.dumps(body["input"]))
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


def test_retry_after_holds_the_refused_request_not_the_whole_worker(server: FakeOpenAIServer) -> None:
    server.configure(fail_next=[429], fault_retry_after_s=2.0)
    client = TimedClient(server.base_url)
    config = make_config(server, limits=RequestLimits(1, 300_000, 8192))

    outcome = run(config, inputs_of(texts(3)), client=client)

    assert len(outcome.vectors) == 3
    throttled_at = next(t for t, status in client.ended if status == 429)
    later = sorted(t - throttled_at for t in client.sent if t > throttled_at)
    assert len(later) == 3  # the retry and both requests that were still waiting
    assert later[-1] >= 2.0 - 0.01  # the refused one came back no sooner than told
    assert later[-1] <= 2.0 + 0.02 + 1.5  # (generous: a busy machine)
    assert later[0] < 1.0  # the others went on: the window had room (the 429 took nothing)


def test_provider_window_partly_used_elsewhere_is_not_overrun(direction: str) -> None:
    # A neighbour on the same key left ~600 of 6,000 tokens in a 3-second window; our local
    # window starts empty. The first reply's x-ratelimit-remaining-tokens must hold the
    # rest back until the provider's window frees it: not a single 429.
    with FakeOpenAIServer(honest(direction, tpm=6000, rpm=6000, window_s=3.0)) as srv:
        neighbour = openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
        neighbour.embeddings.create(model=MODEL, input=["w " * 900] * 6)
        neighbour.close()
        items = inputs_of([" ".join(["word"] * 99)] * 50)  # ~5,000 billed in all
        config = make_config(srv, limits=RequestLimits(2, 300_000, 8192), tokens_per_minute=6000,
                             window_s=3.0, max_request_share=0.1)

        started = time.monotonic()
        outcome = run(config, items)
        elapsed = time.monotonic() - started

        assert len(outcome.vectors) == 50
        assert srv.stats().rate_limited == {} and 429 not in srv.stats().responses_by_status
        assert outcome.stats.held_tokens > 0  # the neighbour's usage, learnt from the headers
        assert elapsed < 4 * 3.0  # the neighbour's share left within one window, not stalled


def test_requests_within_one_window_go_at_once_and_the_next_wait_for_it_to_slide(direction: str) -> None:
    # A 2-second window of 4,000 tokens. ~3,000 billed fit at once; the other ~3,000 must
    # wait until the first requests leave the provider's window: no 429, and it takes one
    # window (a leaky bucket would have sent more at once and met 429s).
    with FakeOpenAIServer(honest(direction, tpm=4000, window_s=2.0)) as srv:
        items = inputs_of([" ".join(["word"] * 50)] * 120)
        config = make_config(srv, limits=RequestLimits(4, 300_000, 8192), tokens_per_minute=4000,
                             window_s=2.0, max_request_share=0.1)
        started = time.monotonic()
        outcome = run(config, items)
        elapsed = time.monotonic() - started
        stats = srv.stats()

    assert len(outcome.vectors) == 120 and 429 not in stats.responses_by_status
    assert 2.0 <= elapsed < 3 * 2.0 + 3.0  # one window's wait, not a stall (generous: busy machines)
    for t, _ in stats.admitted:  # the provider's window never held more than its limit
        assert sum(n for u, n in stats.admitted if t - 2.0 < u <= t) <= 4000


# ---------------------------------------------------------------- requests that fit


def test_a_request_too_large_for_the_providers_limit_is_split_never_resent_unchanged(
    direction: str,
) -> None:
    # Configured for 20,000 TPM, the key really has 1,000: the provider answers its
    # "Request too large" 429 (a retry-after included). The tier must split, learn the
    # provider's limit from x-ratelimit-limit-tokens, and never resend a refused body.
    with FakeOpenAIServer(honest(direction, tpm=1000, window_s=2.0)) as srv:
        client = TimedClient(srv.base_url)
        items = inputs_of([f"doc{i} " + " ".join(["word"] * 40) for i in range(60)])  # ~2,500 billed
        config = make_config(srv, tokens_per_minute=20_000, max_request_share=1.0, window_s=2.0)

        outcome = run(config, items, client=client)
        stats = srv.stats()

    assert sorted(outcome.vectors) == list(range(60)) and not outcome.failures
    assert stats.rate_limited.get("too_large", 0) >= 1 and outcome.stats.size_splits >= 1
    refused = {b for b, (_, status) in zip(client.bodies, client.ended, strict=True) if status == 429}
    resent = [b for b in client.bodies if b in refused]
    assert len(resent) == len(refused)  # each refused body went out exactly once
    assert stats.billed_inputs_by_model == {MODEL: 60}


def test_one_input_larger_than_the_whole_limit_is_dead_lettered_not_waited_for(direction: str) -> None:
    with FakeOpenAIServer(honest(direction, tpm=100)) as srv:
        items = inputs_of([" ".join(["word"] * 300), "short text"])
        config = make_config(srv, tokens_per_minute=10_000, max_request_share=1.0,
                             limits=RequestLimits(1, 300_000, 8192))
        started = time.monotonic()
        outcome = run(config, items)

        assert time.monotonic() - started < 20.0  # no 60-second retry-after was waited out
        failure = outcome.failures[0]
        assert (failure.status, failure.error_type, failure.retryable) == (
            "too_large", "InputTooLargeForRateLimit", False)
        assert "api.tokens_per_minute" in failure.message
        assert 1 in outcome.vectors
        assert srv.stats().rate_limited == {"too_large": 1}  # sent once


def test_requests_never_take_more_than_their_share_of_the_token_limit(server: FakeOpenAIServer) -> None:
    items = inputs_of([" ".join(["word"] * 30)] * 200)
    outcome = run(make_config(server, tokens_per_minute=60_000, max_request_share=0.05), items)

    assert len(outcome.vectors) == 200
    assert server.stats().max_request_tokens_seen <= 0.05 * 60_000


def test_400_for_a_request_over_the_per_request_limit_is_bisected(direction: str) -> None:
    with FakeOpenAIServer(honest(direction, max_tokens_per_request=100)) as srv:
        items = inputs_of([" ".join(["word"] * 30)] * 8)  # packed by our limit of 300
        outcome = run(make_config(srv, limits=RequestLimits(2048, 300, 8192)), items)

        assert sorted(outcome.vectors) == list(range(8)) and not outcome.failures
        assert srv.stats().billed_inputs_by_model == {MODEL: 8}


# ---------------------------------------------------------------- one retry layer


def test_sdk_retries_are_off_so_one_failed_attempt_is_one_request(server: FakeOpenAIServer) -> None:
    server.configure(fail_next=[500])
    config = make_config(server, backoff=replace(FAST, max_attempts=1))

    outcome = run(config, inputs_of(texts(1)))

    assert server.stats().requests_total == 1
    assert outcome.failures[0].status == "500" and outcome.failures[0].retryable


def test_5xx_timeouts_and_malformed_replies_are_retried_until_each_document_lands(direction: str) -> None:
    cfg = honest(direction, seed=11, error_rate=0.2, timeout_rate=0.1, hang_s=1.0, malformed_rate=0.1)
    with FakeOpenAIServer(cfg) as srv:
        config = make_config(srv, limits=RequestLimits(3, 300_000, 8192), timeout_s=0.3,
                             breaker_failure_threshold=50)
        outcome = run(config, inputs_of(texts(60)))

        assert sorted(outcome.vectors) == list(range(60)) and not outcome.failures
        seen = outcome.stats.requests_by_status
        assert seen["timeout"] > 0 and seen["malformed"] > 0
        assert sum(seen[s] for s in ("500", "502", "503")) > 0
        assert srv.stats().billed_inputs_by_model == {MODEL: 60}


def test_200_without_data_is_retried_as_malformed_until_each_document_lands(direction: str) -> None:
    with FakeOpenAIServer(honest(direction, seed=4, missing_data_rate=0.4)) as srv:
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
    assert outcome.stats.breaker_transitions == {"closed->open": 1}


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
    assert second.stats.breaker_transitions == {"open->half-open": 1, "half-open->closed": 1}


@pytest.mark.parametrize("fault", ["dead", "refuse"])
def test_requests_wait_for_the_breaker_through_an_outage_and_all_land(
    server: FakeOpenAIServer, fault: str,
) -> None:
    # A 1.5 s outage (503s, or connections dropped) with the breaker's reset at 0.3 s and a
    # 10 s bound on the wait: nothing is short-circuited; probes find the endpoint back.
    config = make_config(server, limits=RequestLimits(2, 300_000, 8192), breaker_failure_threshold=2,
                         breaker_reset_after_s=0.3, breaker_max_wait_s=10.0,
                         backoff=replace(FAST, max_attempts=6, base_s=0.05, cap_s=0.2))
    server.configure(**{fault: True})
    threading.Timer(1.5, lambda: server.configure(**{fault: False})).start()

    outcome = run(config, inputs_of(texts(30)))

    assert sorted(outcome.vectors) == list(range(30))
    assert not outcome.short_circuited and not outcome.failures
    moves = outcome.stats.breaker_transitions
    assert moves["closed->open"] >= 1 and moves["half-open->closed"] == 1
    assert moves["open->half-open"] == moves["half-open->open"] + 1  # every probe but the last failed
    assert outcome.stats.breaker_wait_s > 0
    assert server.stats().billed_inputs_by_model == {MODEL: 30}


def test_requests_whose_wait_for_the_breaker_passes_the_bound_are_short_circuited(
    server: FakeOpenAIServer,
) -> None:
    config = make_config(server, limits=RequestLimits(1, 300_000, 8192), breaker_failure_threshold=1,
                         breaker_reset_after_s=0.2, breaker_max_wait_s=0.5,
                         backoff=replace(FAST, max_attempts=50, max_total_s=30.0))
    server.configure(dead=True)
    started = time.monotonic()
    outcome = run(config, inputs_of(texts(6)))

    assert outcome.short_circuited and not outcome.vectors
    assert len(outcome.short_circuited) + len(outcome.failures) == 6
    assert time.monotonic() - started < 15.0  # bounded by the wait, not by the 30 s retry budget


# ---------------------------------------------------------------- cost and limits


def test_cost_equals_the_servers_billed_tokens_times_price_exactly(direction: str) -> None:
    with FakeOpenAIServer(honest(direction, seed=5, error_rate=0.3)) as srv:
        items = inputs_of([f"Listing {i}: " + "renovated kitchen, garden; " * (i % 9 + 1) for i in range(50)])
        price = Price(MODEL, "0.13")
        config = make_config(srv, limits=RequestLimits(7, 300_000, 8192), breaker_failure_threshold=50)

        outcome = run(config, items)

        billed = srv.stats().billed_tokens_by_model[MODEL]
        assert billed == bill(srv, items)  # 5xx were not paid twice
        assert outcome.stats.billed_tokens == billed
        assert sum(outcome.billed_tokens.values()) == billed  # apportioned, whole tokens
        per_input = sum(exact_cost_usd(t, price) for t in outcome.billed_tokens.values())
        assert per_input == exact_cost_usd(billed, price) == Fraction(billed * 13, 100_000_000)
        assert (outcome.stats.sent_est_tokens > billed) == (direction == "below")  # kept apart


def test_no_input_over_a_limit_is_ever_sent(direction: str) -> None:
    limits = RequestLimits(max_inputs=5, max_tokens=60, max_tokens_per_input=20)
    # the double's limits are ours in its own count (7% more or less than our estimate)
    ratio = max(1.0, DIRECTIONS[direction])  # and half a token of rounding per input
    fake = honest(direction, max_inputs_per_request=5, max_tokens_per_request=math.ceil(60 * ratio) + 3,
                  max_tokens_per_input=math.ceil(20 * ratio) + 1)
    with FakeOpenAIServer(fake) as srv:
        items = inputs_of([" ".join(["word"] * (1 + i % 20)) for i in range(80)])
        items.append(ApiInput(" ".join(["word"] * 21), 21))  # over the per-input limit

        outcome = run(make_config(srv, limits=limits), items)

        stats = srv.stats()
        assert 400 not in stats.responses_by_status
        assert stats.max_inputs_seen <= 5 and stats.max_request_tokens_seen <= fake.max_tokens_per_request
        assert stats.max_request_tokens_seen >= 50  # and requests are filled close to the limit
        assert set(outcome.failures) == {80} and outcome.failures[80].error_type == "InputTooLong"
        assert sorted(outcome.vectors) == list(range(80))


def test_an_input_larger_than_the_whole_token_budget_is_refused_not_crashed(
    server: FakeOpenAIServer,
) -> None:
    # No request may be larger than the window it has to fit in.
    items = inputs_of([" ".join(["word"] * 20), "short text"])

    outcome = run(make_config(server, tokens_per_minute=15, max_request_share=1.0), items)

    assert outcome.failures[0].error_type == "InputTooLong" and 1 in outcome.vectors
    assert server.stats().max_input_tokens_seen <= 15


# ---------------------------------------------------------------- spend cap


def test_spend_cap_holds_from_the_first_request_and_refuses_only_what_cannot_fit(
    server: FakeOpenAIServer,
) -> None:
    items = inputs_of([" ".join(["word"] * 10)] * 20)  # 10 estimated tokens, 51 at most each
    config = make_config(server, limits=RequestLimits(1, 300_000, 8192), spend_cap_usd=75.0,
                         price=DOLLAR_A_TOKEN)

    outcome = run(config, items)

    billed = server.stats().billed_tokens_total
    assert billed <= 75 and billed == sum(outcome.billed_tokens.values())
    assert outcome.vectors and outcome.over_budget == set(range(20)) - set(outcome.vectors)
    # a document was refused only because its upper bound could not fit what was left
    assert billed + token_upper_bound(items[0].text) > 75
    assert outcome.stats.over_budget_inputs == 20 - len(outcome.vectors)


def test_budget_is_not_overspent_when_the_provider_counts_far_more_than_the_estimate() -> None:
    # Part codes: a real tokenizer bills several tokens per 6-letter non-word, our estimate
    # one. The cap is 30% of what the provider bills for all of them; requests go out 4 at
    # a time, packed 8 documents each, before any reply has said how the provider counts.
    codes = [" ".join(f"{chr(65 + (i * 7 + k) % 26)}{chr(75 + (i + k) % 15)}Q{i % 10}Z{k % 10}"
                      for k in range(8)) for i in range(400)]
    with FakeOpenAIServer(FakeServerConfig(token_count="tokenizer")) as srv:
        items = inputs_of(codes)
        full_bill = bill(srv, items)
        assert full_bill > 2 * sum(i.est_tokens for i in items)  # the estimate is far too low
        cap = 0.3 * full_bill  # at $1 a token
        config = make_config(srv, limits=RequestLimits(8, 300_000, 8192), spend_cap_usd=cap,
                             price=DOLLAR_A_TOKEN)

        outcome = run(config, items)

        billed = srv.stats().billed_tokens_total
        assert billed <= cap
        assert billed >= 0.8 * cap  # and most of the budget is used: it waits, splits, then stops
        assert len(outcome.vectors) + len(outcome.over_budget) == 400 and not outcome.failures
        assert outcome.stats.budget_splits > 0


def test_breaker_half_open_trial_is_not_lost_when_the_spend_cap_refuses_it(
    server: FakeOpenAIServer,
) -> None:
    now = [0.0]
    config = make_config(server, limits=RequestLimits(1, 300_000, 8192), breaker_failure_threshold=1,
                         breaker_reset_after_s=10.0, backoff=replace(FAST, max_attempts=1),
                         spend_cap_usd=100.0, price=DOLLAR_A_TOKEN)
    embedder = ApiEmbedder(config, clock=lambda: now[0])
    try:
        server.configure(dead=True)
        embedder.embed(inputs_of(["a b"]))  # opens the breaker, bills nothing
        server.configure(dead=False)
        now[0] += 10.0  # half-open: one trial may go
        too_dear = embedder.embed(inputs_of([" ".join(["word"] * 60)]))  # bound 301 > 100
        affordable = embedder.embed(inputs_of([" ".join(["word"] * 10)]))  # bound 51
    finally:
        embedder.close()

    assert too_dear.over_budget == {0} and not too_dear.short_circuited
    assert sorted(affordable.vectors) == [0]  # the trial was still there to take


def test_chunks_of_a_document_are_not_sent_after_another_chunk_was_refused_by_the_cap(
    server: FakeOpenAIServer,
) -> None:
    # One document in three chunks, one request each (max_inputs=1): the first fits the
    # $120 cap, the second's upper bound cannot fit beside its bill, and the third would
    # fit but would be paid for and then thrown away.
    items = [ApiInput(" ".join(["word"] * n), n, group=0) for n in (10, 30, 5)]
    assert token_upper_bound(items[0].text) <= 120 < 12 + token_upper_bound(items[1].text)
    config = make_config(server, limits=RequestLimits(1, 300_000, 8192), spend_cap_usd=120.0,
                         price=DOLLAR_A_TOKEN, max_in_flight=1)

    outcome = run(config, items)

    assert sorted(outcome.vectors) == [0] and outcome.over_budget == {1, 2}
    assert server.stats().billed_tokens_total == billed_tokens(items[0].text, server.config)
    assert outcome.stats.over_budget_inputs == 2


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
                         spend_cap_usd=1000.0, price=DOLLAR_A_TOKEN)
    embedder = ApiEmbedder(config)
    try:
        outcome = embedder.embed(items)
    finally:
        embedder.close()

    assert outcome.failures[0].status == "timeout" and outcome.stats.billed_tokens == 0
    assert outcome.stats.timed_out_est_tokens == 10
    assert embedder.spend.billed_usd == token_upper_bound(items[0].text)  # the bound, kept
    assert embedder.spend.reserved_usd == 0


def test_request_too_slow_to_answer_is_halved_until_it_fits(server: FakeOpenAIServer) -> None:
    # The server needs 40 ms per input; the client waits 0.5 s: 32 inputs cannot finish,
    # 8 can. Retrying the same 32-input request would time out forever.
    server.configure(latency_per_input_s=0.04)
    items = inputs_of(texts(32))
    embedder = ApiEmbedder(make_config(server, timeout_s=0.5, breaker_failure_threshold=50,
                                       spend_cap_usd=1e6, price=DOLLAR_A_TOKEN))
    try:
        outcome = embedder.embed(items)
    finally:
        embedder.close()
    assert outcome.failures == {} and not outcome.short_circuited
    assert sorted(outcome.vectors) == list(range(32))
    assert outcome.stats.requests_by_status["timeout"] >= 1
    server.wait_idle()  # the requests we gave up on are still being served
    stats = server.stats()
    assert stats.max_inputs_seen == 32
    # The provider served and billed every request we gave up on; we paid for each document
    # more than once, and only the spend guard, which kept each timed-out request's upper
    # bound as spent, knows it.
    ours = sum(outcome.billed_tokens.values())
    assert ours < stats.billed_tokens_total <= embedder.spend.billed_usd


# ---------------------------------------------------------------- replies as they arrive


def test_every_reply_is_handed_over_as_it_arrives(server: FakeOpenAIServer) -> None:
    seen: list[ApiReply] = []
    items = inputs_of(texts(12))
    outcome = run(make_config(server, limits=RequestLimits(3, 300_000, 8192)), items,
                  on_reply=seen.append)

    assert sorted(i for r in seen for i in r.idxs) == list(range(12))
    assert sum(sum(r.billed_tokens) for r in seen) == server.stats().billed_tokens_total
    for r in seen:
        assert [outcome.vectors[i] for i in r.idxs] == list(r.vectors)


def test_a_failing_reply_hook_does_not_lose_the_vectors(server: FakeOpenAIServer) -> None:
    def broken(_: ApiReply) -> None:
        raise OSError("disk full")

    outcome = run(make_config(server), inputs_of(texts(3)), on_reply=broken)
    assert sorted(outcome.vectors) == [0, 1, 2]
