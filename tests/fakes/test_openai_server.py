"""Tests of the fault-injecting OpenAI fake, driven through the real ``openai`` client.

The fake is what the API tier's tests and the benchmark trust, so these tests pin its
wire format, limits, rate-limit headers, faults and billing against the client itself.
"""

from __future__ import annotations

import base64
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.openai_server import (
    FakeOpenAIServer,
    FakeServerConfig,
    _FakeOpenAIApp,
    billed_tokens,
    configure_remote,
    count_tokens,
    embed_text,
    fetch_stats,
    format_reset_duration,
    reset_remote,
)

__all__: list[str] = []

MODEL = "text-embedding-3-small"
REPO_ROOT = Path(__file__).resolve().parents[2]


class ManualClock:
    """A clock the test moves by hand, so refills need no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(FakeServerConfig(seed=1)) as srv:
        yield srv


def make_client(srv: FakeOpenAIServer, timeout: float = 5.0) -> openai.OpenAI:
    # max_retries=0: these tests watch single requests, not the SDK's retry layer.
    return openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0, timeout=timeout)


@pytest.fixture
def client(server: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    with make_client(server) as c:
        yield c


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------ pure functions


def test_count_tokens_counts_words_and_punctuation_at_least_one() -> None:
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("   ") == 1


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, "0s"), (0.12, "120ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"), (3723.5, "1h2m3.5s")],
)
def test_format_reset_duration_uses_openai_style(seconds: float, expected: str) -> None:
    assert format_reset_duration(seconds) == expected


def test_embed_text_is_unit_length_deterministic_and_tracks_word_overlap() -> None:
    cat = embed_text("The cat sat on the mat")
    assert cat == embed_text("the CAT sat on the mat")
    assert math.isclose(cosine(cat, cat), 1.0, rel_tol=1e-6)
    near = cosine(cat, embed_text("the cat sat on a mat"))
    far = cosine(cat, embed_text("quantum chromodynamics lecture notes"))
    assert near > 0.7 > far


def test_config_rejects_unknown_fields_and_bad_rates(server: FakeOpenAIServer) -> None:
    with pytest.raises(TypeError, match="unknown FakeServerConfig field"):
        server.configure(eror_rate=0.5)
    with pytest.raises(ValueError, match="error_rate"):
        server.configure(error_rate=1.5)


# ------------------------------------------------------------------------ wire format


def test_default_base64_and_explicit_float_decode_to_same_vectors(client: openai.OpenAI) -> None:
    texts = ["hello world", "tiered embeddings, cheaply!"]
    default = client.embeddings.create(model=MODEL, input=texts)  # client asks for base64
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert floats.data[1].embedding == embed_text(texts[1])
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.object == "list" and floats.model == MODEL


def test_explicit_base64_is_little_endian_float32(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model=MODEL, input="hello", encoding_format="base64")
    raw = base64.b64decode(reply.data[0].embedding)  # type: ignore[arg-type]
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == embed_text("hello")


def test_dimensions_truncates_and_renormalizes(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model=MODEL, input="a b c d e f g", dimensions=16)
    vector = reply.data[0].embedding
    assert len(vector) == 16
    assert math.isclose(cosine(vector, vector), 1.0, rel_tol=1e-6)


def test_usage_equals_the_configured_count_and_billed_stats_match(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    texts = ["one, two", "three four five.", "six"]
    reply = client.embeddings.create(model=MODEL, input=texts)
    expected = sum(billed_tokens(t, server.config) for t in texts)
    assert expected == 2 + 4 + 1  # ceil(UTF-8 bytes / 4), the default rule
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == expected
    client.embeddings.create(model="other-model", input=[[1, 2, 3], [4, 5]])
    stats = server.stats()
    assert stats.billed_tokens_by_model == {MODEL: expected, "other-model": 5}
    assert stats.billed_inputs_by_model == {MODEL: 3, "other-model": 2}
    assert stats.responses_by_status == {200: 2}


def test_models_endpoint_lists_configured_models() -> None:
    config = FakeServerConfig(models=("small", "large"))
    with FakeOpenAIServer(config) as srv, make_client(srv) as client:
        assert [m.id for m in client.models.list()] == ["small", "large"]
        assert client.models.retrieve("large").id == "large"


def test_unknown_model_answers_404_model_not_found() -> None:
    config = FakeServerConfig(models=("small",))
    with (
        FakeOpenAIServer(config) as srv,
        make_client(srv) as client,
        pytest.raises(openai.NotFoundError) as caught,
    ):
        client.embeddings.create(model="huge", input="x")
    assert caught.value.code == "model_not_found"


# ---------------------------------------------------------------------------- limits


def test_input_over_token_limit_answers_400_and_records_max_seen() -> None:
    config = FakeServerConfig(max_tokens_per_input=5, token_count="words")
    with FakeOpenAIServer(config) as srv, make_client(srv) as c:
        with pytest.raises(openai.BadRequestError) as caught:
            c.embeddings.create(model=MODEL, input=["ok", "one two three four five six"])
        stats = srv.stats()
    assert caught.value.status_code == 400
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.type == "invalid_request_error"
    assert stats.max_input_tokens_seen == 6 and stats.max_request_tokens_seen == 7
    assert stats.billed_tokens_by_model == {} and stats.responses_by_status == {400: 1}


def test_too_many_inputs_and_too_many_request_tokens_answer_400() -> None:
    config = FakeServerConfig(max_inputs_per_request=2, max_tokens_per_request=5, token_count="words")
    with FakeOpenAIServer(config) as srv, make_client(srv) as client:
        with pytest.raises(openai.BadRequestError) as too_many:
            client.embeddings.create(model=MODEL, input=["a", "b", "c"])
        with pytest.raises(openai.BadRequestError) as too_long:
            client.embeddings.create(model=MODEL, input=["a b c", "d e f"])
        assert srv.stats().max_inputs_seen == 3
    assert too_many.value.code == "too_many_inputs"
    assert too_long.value.code == "max_tokens_per_request"


def words(**changes: object) -> FakeServerConfig:
    """A config that bills one token per word or mark, so limits read as word counts."""
    return FakeServerConfig(token_count="words", **changes)  # type: ignore[arg-type]


def test_success_carries_ratelimit_headers_of_the_window() -> None:
    clock = ManualClock()
    with FakeOpenAIServer(words(rpm=60, tpm=1000), clock=clock) as srv, make_client(srv) as c:
        c.embeddings.create(model=MODEL, input="a b c")
        clock.advance(20)
        raw = c.embeddings.with_raw_response.create(model=MODEL, input="a b c d")
    assert raw.headers["x-ratelimit-limit-requests"] == "60"
    assert raw.headers["x-ratelimit-remaining-requests"] == "58"
    assert raw.headers["x-ratelimit-limit-tokens"] == "1000"
    assert raw.headers["x-ratelimit-remaining-tokens"] == "993"
    # "until the limit resets to its initial state": the newest request leaves in 60 s
    assert raw.headers["x-ratelimit-reset-tokens"] == raw.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert raw.parse().usage.prompt_tokens == 4


def test_rpm_exhausted_answers_429_until_the_oldest_request_leaves_the_window() -> None:
    clock = ManualClock()
    with FakeOpenAIServer(words(rpm=2), clock=clock) as srv, make_client(srv) as c:
        c.embeddings.create(model=MODEL, input="a")
        clock.advance(10)
        c.embeddings.create(model=MODEL, input="b")
        clock.advance(20)  # a bucket would have refilled one request by now; a window has not
        with pytest.raises(openai.RateLimitError) as caught:
            c.embeddings.create(model=MODEL, input="c")
        clock.advance(30)  # the first request leaves the window 60 s after it was admitted
        c.embeddings.create(model=MODEL, input="c")
        with pytest.raises(openai.RateLimitError):
            c.embeddings.create(model=MODEL, input="d")
        stats = srv.stats()
    headers = caught.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("30", "30000")
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "40s"
    assert (caught.value.type, caught.value.code) == ("requests", "rate_limit_exceeded")
    assert stats.rate_limited == {"requests": 2}
    assert stats.responses_by_status == {200: 3, 429: 2}


def test_tpm_window_frees_tokens_only_as_requests_leave_it() -> None:
    clock = ManualClock()
    with FakeOpenAIServer(words(tpm=10), clock=clock) as srv, make_client(srv) as c:
        c.embeddings.create(model=MODEL, input="a b c d e f g h")  # 8 of 10 tokens
        clock.advance(45)  # a bucket refilling 10/min would hold 9.5 tokens by now
        with pytest.raises(openai.RateLimitError) as caught:
            c.embeddings.create(model=MODEL, input="a b c d e")
        c.embeddings.create(model=MODEL, input="a b")  # the 429 left 2 tokens untouched
        clock.advance(15)  # the 8 leave; the 2 stay until t=105
        c.embeddings.create(model=MODEL, input="a b c d e f g h")
        stats = srv.stats()
    assert caught.value.type == "tokens"
    assert caught.value.response.headers["retry-after-ms"] == "15000"  # when the 8 leave
    assert stats.rate_limited == {"tokens": 1}
    assert stats.billed_tokens_by_model == {MODEL: 18}
    assert [n for _, n in stats.admitted] == [8, 2, 8]


def test_request_over_the_whole_tpm_is_refused_as_openai_does_and_takes_nothing() -> None:
    with FakeOpenAIServer(words(tpm=10)) as srv, make_client(srv) as c:
        with pytest.raises(openai.RateLimitError) as caught:
            c.embeddings.create(model=MODEL, input=["a b c d e f", "g h i j k"])
        c.embeddings.create(model=MODEL, input="a b c d e f g h i j")  # the window is untouched
        stats = srv.stats()
    error = caught.value
    # the structured fields are those of any TPM 429 (OpenAI sends the same); only the
    # message and the request's size against x-ratelimit-limit-tokens tell them apart
    assert (error.status_code, error.type, error.code) == (429, "tokens", "rate_limit_exceeded")
    assert "Request too large" in error.message and "Limit 10, Requested 11" in error.message
    assert error.response.headers["x-ratelimit-limit-tokens"] == "10"
    assert "retry-after" in error.response.headers  # waiting would never help
    assert stats.rate_limited == {"too_large": 1} and stats.billed_tokens_by_model == {MODEL: 10}


def test_each_api_key_has_a_window_of_its_own() -> None:
    with FakeOpenAIServer(words(rpm=1)) as srv, make_client(srv) as first:
        first.embeddings.create(model=MODEL, input="a")
        with pytest.raises(openai.RateLimitError):
            first.embeddings.create(model=MODEL, input="a")
        with openai.OpenAI(base_url=srv.base_url, api_key="other", max_retries=0) as second:
            second.embeddings.create(model=MODEL, input="a")


# --------------------------------------------------------------------- token counts

PART_CODES = "XKQ7ZB PLMTRV QZXW9K BRKTLX VZNQPM"


def test_token_count_rules_and_ratios_above_and_below_the_estimate() -> None:
    from tiering.chunking import estimate_tokens

    text = "Bright two-bedroom flat near the station, renovated kitchen and garden."
    est = estimate_tokens(text)
    assert billed_tokens(text, FakeServerConfig()) == math.ceil(len(text.encode()) / 4)
    assert billed_tokens(text, FakeServerConfig(token_count="estimate")) == est
    above = billed_tokens(text, FakeServerConfig(token_count="estimate", token_ratio=1.07))
    below = billed_tokens(text, FakeServerConfig(token_count="estimate", token_ratio=0.93))
    assert above == round(est * 1.07) > est > below == round(est * 0.93)
    # a real tokenizer splits non-words into pieces: far above our one-per-word estimate
    assert billed_tokens(PART_CODES, FakeServerConfig(token_count="tokenizer")) > 2 * estimate_tokens(
        PART_CODES)
    with pytest.raises(ValueError, match="token_count"):
        FakeServerConfig(token_count="guess")


def test_server_bills_with_its_configured_rule() -> None:
    config = FakeServerConfig(token_count="tokenizer")
    with FakeOpenAIServer(config) as srv, make_client(srv) as c:
        reply = c.embeddings.create(model=MODEL, input=[PART_CODES, "a house"])
    assert reply.usage.prompt_tokens == billed_tokens(PART_CODES, config) + billed_tokens("a house", config)


# ---------------------------------------------------------------------------- faults


def test_fail_next_sequence_is_honored_then_requests_succeed(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    server.configure(fail_next=[429, 503, 500])
    with pytest.raises(openai.RateLimitError) as limited:
        client.embeddings.create(model=MODEL, input="x")
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.embeddings.create(model=MODEL, input="x")
    with pytest.raises(openai.InternalServerError) as failed:
        client.embeddings.create(model=MODEL, input="x")
    client.embeddings.create(model=MODEL, input="x")
    assert limited.value.response.headers["retry-after-ms"] == "100"
    assert (unavailable.value.status_code, failed.value.status_code) == (503, 500)
    stats = server.stats()
    assert stats.injected_faults["fail_next"] == 3 and stats.pending_fail_next == ()
    assert stats.responses_by_status == {429: 1, 503: 1, 500: 1, 200: 1}


def test_refuse_mode_drops_connections_without_a_reply(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    server.configure(refuse=True)
    with pytest.raises(openai.APIConnectionError):
        client.embeddings.create(model=MODEL, input="x")
    server.configure(refuse=False)
    client.embeddings.create(model=MODEL, input="x")
    stats = server.stats()
    assert stats.injected_faults["refuse"] >= 1 and stats.responses_by_status == {200: 1}


def test_dead_mode_answers_503_until_revived(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    server.configure(dead=True)
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(model=MODEL, input="x")
    assert caught.value.status_code == 503
    server.configure(dead=False)
    assert client.embeddings.create(model=MODEL, input="x").usage.prompt_tokens == 1


def test_seeded_error_rate_replays_the_same_statuses() -> None:
    def statuses() -> list[int]:
        config = FakeServerConfig(seed=7, error_rate=0.5)
        seen = []
        with FakeOpenAIServer(config) as srv, make_client(srv) as client:
            for _ in range(20):
                try:
                    seen.append(
                        client.embeddings.with_raw_response.create(
                            model=MODEL, input="x"
                        ).status_code
                    )
                except openai.InternalServerError as exc:
                    seen.append(exc.status_code)
        return seen

    first = statuses()
    assert first == statuses()
    assert 200 in first and set(first) - {200} <= {500, 502, 503} and len(set(first)) > 1


def test_poison_marker_answers_400_terminal(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input=["fine", "bad __POISON__ doc"])
    assert caught.value.param == "input" and "Input 1" in caught.value.message
    assert server.stats().injected_faults["poison"] == 1


def test_malformed_reply_fails_in_client_and_is_not_billed(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    server.configure(malformed_rate=1.0)
    with pytest.raises((ValueError, openai.APIResponseValidationError)):
        client.embeddings.create(model=MODEL, input="x")
    stats = server.stats()
    assert stats.injected_faults["malformed"] == 1 and stats.billed_tokens_by_model == {}


def test_latency_delays_the_reply(server: FakeOpenAIServer, client: openai.OpenAI) -> None:
    server.configure(latency_s=0.2)
    started = time.monotonic()
    client.embeddings.create(model=MODEL, input="x")
    assert time.monotonic() - started >= 0.2


def test_hang_times_out_the_client_and_stop_does_not_wait_for_it() -> None:
    srv = FakeOpenAIServer(FakeServerConfig(timeout_rate=1.0, hang_s=30)).start()
    try:
        with make_client(srv, timeout=0.3) as client, pytest.raises(openai.APITimeoutError):
            client.embeddings.create(model=MODEL, input="x")
        stats = srv.stats()
    finally:
        started = time.monotonic()
        srv.stop()
    assert time.monotonic() - started < 2.0
    assert stats.injected_faults["timeout"] == 1 and stats.billed_tokens_by_model == {}


def _wait_for_a_request(server: FakeOpenAIServer) -> None:
    deadline = time.monotonic() + 10
    while server.stats().requests_total == 0:
        assert time.monotonic() < deadline, "the request never reached the server"
        time.sleep(0.005)


def test_a_reply_undelivered_after_a_reset_leaves_the_fresh_stats_alone() -> None:
    # A client killed while its reply is written: the reply was counted, then reset() ran,
    # then the write failed. The take-back belongs to the stats that counted it; landing in
    # the fresh stats, it billed a later run 76 tokens less than it was sent (CI, stop 18).
    app = _FakeOpenAIApp(FakeServerConfig(), time.monotonic)
    body = f'{{"model": "{MODEL}", "input": ["a b c", "d e"]}}'.encode()
    undelivered = app.record_reply(app.embeddings(body))
    app.reset()
    undelivered()
    fresh = app.stats()
    assert fresh.billed_tokens_by_model == {} and fresh.responses_by_status == {}
    app.record_reply(app.embeddings(body))
    assert app.stats().responses_by_status == {200: 1}


def test_a_client_that_hangs_up_before_its_reply_is_billed_all_the_same(server: FakeOpenAIServer) -> None:
    # The provider did the work: it bills it whether or not the client reads the reply (the
    # strict side for budgets). The client resets its connection (SO_LINGER 0) while the
    # server waits out its latency, so the server's write fails for sure.
    server.configure(latency_s=1.0)
    body = f'{{"model": "{MODEL}", "input": ["a b c"]}}'.encode()
    request = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    address = urllib.parse.urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as conn:
        conn.sendall(request)
        _wait_for_a_request(server)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.wait_idle(timeout=5)
    stats = server.stats()
    assert stats.billed_inputs_by_model == {MODEL: 1} and stats.billed_tokens_total > 0
    assert stats.responses_by_status == {}  # no client saw it


def test_wait_idle_waits_for_a_reply_in_progress(server: FakeOpenAIServer, client: openai.OpenAI) -> None:
    server.configure(latency_s=1.0)
    caller = threading.Thread(target=client.embeddings.create, kwargs={"model": MODEL, "input": "a"})
    caller.start()
    _wait_for_a_request(server)
    assert server.stats().responses_by_status == {}
    server.wait_idle(timeout=5)
    assert server.stats().responses_by_status == {200: 1}
    caller.join(timeout=5)
    server.configure(hang_s=30, timeout_rate=1.0)
    with make_client(server, timeout=0.1) as short, pytest.raises(openai.APITimeoutError):
        short.embeddings.create(model=MODEL, input="a")
    with pytest.raises(TimeoutError, match="still answering"):
        server.wait_idle(timeout=0.1)


# ------------------------------------------------------------------ control surfaces


def test_http_control_endpoints_report_configure_and_reset(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    client.embeddings.create(model=MODEL, input="a b")
    assert fetch_stats(server.base_url) == server.stats()
    assert configure_remote(server.base_url, fail_next=[503]).fail_next == (503,)
    assert fetch_stats(server.url).pending_fail_next == (503,)
    reset_remote(server.base_url)
    stats = server.stats()
    assert stats.requests_total == 0 and stats.pending_fail_next == ()
    bad = urllib.request.Request(f"{server.url}/_config", data=b'{"nope": 1}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(bad, timeout=5)
    assert caught.value.code == 400


def test_subprocess_serves_one_request_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "tests.fakes.openai_server", "--port", "0", "--rpm", "600"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("LISTENING http://127.0.0.1:") and line.endswith("/v1")
        base_url = line.removeprefix("LISTENING ")
        with openai.OpenAI(base_url=base_url, api_key="test", max_retries=0, timeout=5) as c:
            assert c.embeddings.create(model=MODEL, input="a b c").usage.prompt_tokens == 2
        assert fetch_stats(base_url).billed_tokens_by_model == {MODEL: 2}
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_unknown_api_keys_are_refused_401_on_every_api_route() -> None:
    with FakeOpenAIServer(FakeServerConfig(api_keys=("good",))) as srv:
        with make_client(srv) as wrong:  # api_key="test"
            with pytest.raises(openai.AuthenticationError) as caught:
                wrong.embeddings.create(model=MODEL, input="x")
            with pytest.raises(openai.AuthenticationError):
                wrong.models.retrieve(MODEL)
        with openai.OpenAI(base_url=srv.base_url, api_key="good", max_retries=0) as right:
            right.embeddings.create(model=MODEL, input="x")
        stats = srv.stats()
    assert caught.value.code == "invalid_api_key" and "good" not in caught.value.message
    assert stats.responses_by_status == {401: 1, 200: 1}
