"""EmbedApi as a Beam stage (TestPipeline + assert_that) against the honest OpenAI double,
counting 7% above and 7% below our estimate (``server`` is parametrized): embedded
documents with exact billed cost, dead letters, fallback to the local tier, counters,
durable paid results (result cache + spend ledger, also across a killed run); and
``_api_branch``'s per-worker shares of the limits and the run budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from beam_pipeline.api_embedder import ApiEmbedderConfig
from beam_pipeline.embed_api import FALLBACK, ApiBranch, EmbedApi
from beam_pipeline.pipeline import PipelineSpec, ResolvedApi, _api_branch, routing_policy
from beam_pipeline.validate import DEAD_LETTERS
from store.ledger import SpendLedger
from store.result_cache import CacheKey, ResultCache
from tests.fakes.openai_server import FakeOpenAIServer, FakeServerConfig, billed_tokens
from tiering.backoff import BackoffPolicy
from tiering.chunking import chunk_text, estimate_tokens, token_upper_bound
from tiering.documents import DeadLetter, Document, EmbeddedDocument, RoutedDocument, ScoredDocument, Tier
from tiering.packing import RequestLimits
from tiering.pricing import Price, price_for
from tiering.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
MODEL = "text-embedding-3-small"
VERSION = "te3-small"
LOCAL = (("minilm", 1.0),)
PRICE = Price(MODEL, "0.02")
PER_INPUT = 40


def routed(doc_id: str, text: str) -> RoutedDocument:
    scored = ScoredDocument(Document(doc_id, text, "test.jsonl"), 0.9, estimate_tokens(text))
    return RoutedDocument(scored, Tier.API, VERSION, "score 0.90 >= 0.5")


def branch(server: FakeOpenAIServer, on_open: str = "local", **changes: Any) -> ApiBranch:
    config = ApiEmbedderConfig(
        base_url=server.base_url, api_key="test", model=MODEL, provider="fake",
        limits=RequestLimits(2048, 300_000, PER_INPUT), requests_per_minute=6000,
        tokens_per_minute=1_000_000, max_in_flight=4, timeout_s=5.0,
        backoff=BackoffPolicy(base_s=0.01, cap_s=0.05), breaker_failure_threshold=2,
        breaker_reset_after_s=60.0, price=PRICE,
    )
    return ApiBranch(VERSION, replace(config, **changes), PRICE, on_open, LOCAL)


Check = Callable[[Sequence[Any]], None]


def run_stage(
    api: ApiBranch, docs: Sequence[RoutedDocument], embedded: Check, fallback: Check, dead: Check
) -> dict[str, int]:
    """Run EmbedApi over ``docs`` with a check per output; return the stage's counters."""
    p = TestPipeline()
    out = p | beam.Create(docs, reshuffle=False) | EmbedApi(api)
    assert_that(out["embedded"], embedded, label="Embedded")
    assert_that(out[FALLBACK], fallback, label="Fallback")
    assert_that(out[DEAD_LETTERS], dead, label="DeadLetters")
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace("tierembed"))["counters"]
    return {c.key.metric.name: int(c.committed or 0) for c in counters}


def doc_id(item: EmbeddedDocument | RoutedDocument | DeadLetter) -> str | None:
    if isinstance(item, DeadLetter):
        return item.doc_id
    return item.id if isinstance(item, RoutedDocument) else item.document.id


def ids(expected: set[str]) -> Check:
    def check(items: Sequence[Any]) -> None:
        got = sorted(str(doc_id(i)) for i in items)
        assert got == sorted(expected), got

    return check


def every(*checks: Check) -> Check:
    def check(items: Sequence[Any]) -> None:
        for c in checks:
            c(items)

    return check


@pytest.fixture(params=[1.07, 0.93], ids=["above", "below"])
def server(request: pytest.FixtureRequest) -> Iterator[FakeOpenAIServer]:
    config = FakeServerConfig(seed=2, token_count="estimate", token_ratio=request.param)
    with FakeOpenAIServer(config) as srv:
        yield srv


def listing(i: int) -> str:
    return f"Listing {i}: bright flat with a garden, renovated kitchen, near the station."


def test_documents_are_embedded_chunked_and_billed_exactly_and_poison_is_dead_lettered(
    server: FakeOpenAIServer,
) -> None:
    long_text = " ".join(listing(i) for i in range(12))  # over the 40-token input limit
    docs = [routed(f"d{i}", listing(i)) for i in range(6)]
    docs += [routed("long", long_text), routed("poison", "a listing with __POISON__ inside")]
    sent = [listing(i) for i in range(6)] + chunk_text(long_text, PER_INPUT)
    expected_bill = sum(billed_tokens(t, server.config) for t in sent)

    def exact_cost(items: Sequence[EmbeddedDocument]) -> None:
        assert sum(d.billed_tokens for d in items) == expected_bill
        for d in items:
            assert d.billed_tokens == int(d.billed_tokens) and d.tier is Tier.API
            assert d.cost_usd == float(Fraction(int(d.billed_tokens)) * PRICE.per_token)
        assert next(d for d in items if d.document.id == "long").n_chunks == len(sent) - 6

    def poison_letter(items: Sequence[DeadLetter]) -> None:
        (letter,) = items
        assert (letter.stage, letter.retryable, dict(letter.extra)["status"]) == ("embed", False, "400")
        assert letter.tier == "api" and letter.model_version == VERSION and "__POISON__" in letter.payload

    counters = run_stage(
        branch(server), docs,
        embedded=every(ids({f"d{i}" for i in range(6)} | {"long"}), exact_cost),
        fallback=ids(set()), dead=every(ids({"poison"}), poison_letter),
    )

    assert server.stats().billed_tokens_total == expected_bill
    assert counters[f"billed_tokens.api.{VERSION}"] == expected_bill
    assert counters[f"embedded.api.{VERSION}"] == 7 and counters[f"chunked.api.{VERSION}"] == 1
    assert counters["dead_letters.embed"] == 1
    assert counters[f"api_requests.{VERSION}.400"] >= 1
    assert f"timed_out_tokens.api.{VERSION}" not in counters  # nothing timed out


def test_tokens_of_requests_that_timed_out_reach_the_counters_and_the_report(
    server: FakeOpenAIServer,
) -> None:
    # 40 ms per input and a 0.5 s timeout: the first request of 32 documents times out and is
    # halved until it fits. The provider bills the timed-out requests too; the report says so.
    from flows.reporting import render_text
    from tiering.report import build_report

    server.configure(latency_per_input_s=0.04)
    docs = [routed(f"d{i}", listing(i)) for i in range(32)]
    counters = run_stage(branch(server, timeout_s=0.5, breaker_failure_threshold=50), docs,
                         embedded=ids({f"d{i}" for i in range(32)}), fallback=ids(set()), dead=ids(set()))
    server.wait_idle()

    timed_out = counters[f"timed_out_tokens.api.{VERSION}"]
    billed = counters[f"billed_tokens.api.{VERSION}"]
    assert counters[f"api_requests.{VERSION}.timeout"] >= 1
    assert timed_out >= sum(estimate_tokens(d.scored.document.text) for d in docs)  # the 32 at least
    assert server.stats().billed_tokens_total > billed  # the timed-out requests were billed
    report = build_report(run_id="r", source="s", counters=counters, local_models={},
                          api_models={VERSION: (MODEL, PRICE)}, dead_letter_path="")
    (line,) = report.lines
    assert line.timed_out_tokens == timed_out and line.billed_tokens == billed
    assert f"~{timed_out} tokens in requests that timed out" in render_text(report)


def test_dead_endpoint_trips_the_breaker_and_documents_fall_back_to_local(server: FakeOpenAIServer) -> None:
    server.configure(dead=True)
    docs = [routed(f"d{i}", listing(i)) for i in range(5)]

    def retargeted(items: Sequence[RoutedDocument]) -> None:
        for r in items:
            assert r.tier is Tier.LOCAL and r.model_version == "minilm"
            assert r.reason.startswith("score 0.90") and "circuit open -> local minilm" in r.reason

    counters = run_stage(branch(server, limits=RequestLimits(1, 300_000, PER_INPUT)), docs,
                         embedded=ids(set()), fallback=every(ids({f"d{i}" for i in range(5)}), retargeted),
                         dead=ids(set()))

    assert server.stats().requests_total == 2  # the breaker's threshold, then no more calls
    assert counters[f"fell_back.api.{VERSION}"] == 5
    assert counters[f"api_requests.{VERSION}.503"] == 2


def test_dead_endpoint_dead_letters_documents_when_configured(server: FakeOpenAIServer) -> None:
    server.configure(dead=True)
    docs = [routed(f"d{i}", listing(i)) for i in range(3)]

    def circuit_open(items: Sequence[DeadLetter]) -> None:
        assert {(d.error_type, d.retryable) for d in items} == {("CircuitOpen", True)}

    counters = run_stage(branch(server, on_open="dead_letter"), docs, embedded=ids(set()),
                         fallback=ids(set()), dead=every(ids({"d0", "d1", "d2"}), circuit_open))

    assert counters["dead_letters.embed"] == 3 and f"fell_back.api.{VERSION}" not in counters


def test_run_budget_reached_routes_the_rest_to_local_and_counts_it(server: FakeOpenAIServer) -> None:
    dollar_a_token = Price(MODEL, "1000000")
    text = " ".join(["word"] * 10)  # 10 estimated tokens, at most 51 billed
    docs = [routed(f"d{i}", text) for i in range(20)]
    api = replace(branch(server, limits=RequestLimits(1, 300_000, PER_INPUT), spend_cap_usd=120.0,
                         price=dollar_a_token), price=dollar_a_token)
    paid = billed_tokens(text, server.config)
    bound = token_upper_bound(text)

    def within_cap(items: Sequence[EmbeddedDocument]) -> None:
        assert sum(d.cost_usd for d in items) == len(items) * paid <= 120.0
        # one more was refused only because its upper bound no longer fitted
        assert len(items) * paid + bound > 120.0

    def budget_reason(items: Sequence[RoutedDocument]) -> None:
        assert all(r.tier is Tier.LOCAL and "run budget reached -> local" in r.reason for r in items)

    counters = run_stage(api, docs, embedded=within_cap, fallback=budget_reason, dead=ids(set()))

    moved = 20 - counters[f"embedded.api.{VERSION}"]
    assert moved > 0 and server.stats().billed_tokens_total == (20 - moved) * paid
    assert counters[f"fell_back_budget.api.{VERSION}"] == moved == counters[f"fell_back.api.{VERSION}"]


def test_coverage_document_is_dead_lettered_not_sent_to_local_a_second_time_when_the_breaker_opens(
    server: FakeOpenAIServer,
) -> None:
    # Coverage mode: the document already goes to local; a second local copy would put the
    # same id twice into one LanceDB merge_insert. An outage is a failure: replay adds the
    # API vector later.
    docs = [replace(routed(f"d{i}", " ".join(["word"] * 10)), has_local_target=True) for i in range(3)]
    server.configure(dead=True)
    api = branch(server, limits=RequestLimits(1, 300_000, PER_INPUT))

    def keeps_local(items: Sequence[DeadLetter]) -> None:
        for d in items:
            assert (d.error_type, d.retryable, d.tier) == ("CircuitOpen", True, "api")
            assert "keeps its local vector" in d.message and "tierembed replay" in d.message

    counters = run_stage(api, docs, embedded=ids(set()), fallback=ids(set()),
                         dead=every(ids({"d0", "d1", "d2"}), keeps_local))

    assert f"fell_back.api.{VERSION}" not in counters and counters["dead_letters.embed"] == 3


def test_coverage_document_the_spend_cap_refuses_stays_local_only_and_is_no_failure(
    server: FakeOpenAIServer,
) -> None:
    # The budget keeping a coverage document local-only is the plan working, not a failure:
    # no dead letter, no second local copy; counted apart so the accounting adds up.
    docs = [replace(routed(f"d{i}", " ".join(["word"] * 10)), has_local_target=True) for i in range(3)]
    dollar_a_token = Price(MODEL, "1000000")
    api = replace(branch(server, spend_cap_usd=5.0, price=dollar_a_token), price=dollar_a_token)

    counters = run_stage(api, docs, embedded=ids(set()), fallback=ids(set()), dead=ids(set()))

    assert counters[f"budget_kept_local.api.{VERSION}"] == 3 == counters[f"fell_back_budget.api.{VERSION}"]
    assert f"fell_back.api.{VERSION}" not in counters and "dead_letters.embed" not in counters
    assert server.stats().requests_total == 0


def test_documents_are_chunked_to_the_limit_the_token_rate_allows(server: FakeOpenAIServer) -> None:
    # One request may take 5% of 400 tokens per minute: every input is capped at 20
    # estimated tokens, below the model's 40: chunking to 40 would make a 30-token input
    # the embedder refuses as too long.
    text = " ".join(["extraordinarily"] * 10)  # 30 estimated tokens
    api = branch(server, tokens_per_minute=400, max_request_share=0.05)
    chunks = chunk_text(text, 20)
    bill = sum(billed_tokens(c, server.config) for c in chunks)

    def two_chunks(items: Sequence[EmbeddedDocument]) -> None:
        (doc,) = items
        assert doc.n_chunks == len(chunks) == 2 and doc.billed_tokens == bill

    counters = run_stage(api, [routed("long", text)], embedded=every(ids({"long"}), two_chunks),
                         fallback=ids(set()), dead=ids(set()))

    assert counters[f"chunked.api.{VERSION}"] == 1 and server.stats().max_input_tokens_seen <= 22


def test_api_branch_gives_each_worker_its_share_of_limits_and_budget() -> None:
    settings = load_settings(overrides={"api": {
        "requests_per_minute": 3000, "tokens_per_minute": 1_000_000, "worker_share": 0.25,
        "models": [
            {"version": "a", "model": MODEL, "traffic_weight": 0.75},
            {"version": "b", "model": MODEL, "traffic_weight": 0.25, "dimensions": 256},
            {"version": "c", "model": "text-embedding-3-large", "traffic_weight": 0.0},
        ],
    }})
    spec = PipelineSpec(settings, "in.jsonl", "run", 8.0, ResolvedApi("http://x/v1", "k", "openai"))
    policy = routing_policy(settings)
    by_version = {m.version: _api_branch(spec, m, price_for(m.model), policy).config
                  for m in settings.api.models}

    a, b, c = by_version["a"], by_version["b"], by_version["c"]
    # a and b call the same model: they split its limits; c has the large model's own limits
    assert (a.requests_per_minute, a.tokens_per_minute) == (375, 125_000)
    assert (c.requests_per_minute, c.tokens_per_minute) == (750, 250_000)
    # the run budget is split by traffic weight, then by worker
    assert a.spend_cap_usd == pytest.approx(8.0 * 0.75 * 0.25)
    assert b.spend_cap_usd == pytest.approx(8.0 * 0.25 * 0.25) and c.spend_cap_usd == 0.0
    assert a.price == price_for(MODEL)
    no_budget = replace(spec, budget_usd=None)
    assert _api_branch(no_budget, settings.api.models[0], price_for(MODEL),
                       policy).config.spend_cap_usd is None


# ---------------------------------------------------------------- durable paid results


def durable(server: FakeOpenAIServer, tmp_path: Path, run_id: str, **changes: Any) -> ApiBranch:
    return replace(branch(server, limits=RequestLimits(4, 300_000, PER_INPUT), **changes),
                   run_id=run_id, ledger_path=str(tmp_path / "ledger.sqlite"),
                   result_cache_path=str(tmp_path / "results.sqlite"))


def test_every_reply_reaches_the_result_cache_and_the_ledger_as_it_arrives(
    server: FakeOpenAIServer, tmp_path: Path,
) -> None:
    docs = [routed(f"d{i}", listing(i)) for i in range(12)]
    counters = run_stage(durable(server, tmp_path, "run-a"), docs, embedded=ids({f"d{i}" for i in range(12)}),
                         fallback=ids(set()), dead=ids(set()))

    billed = server.stats().billed_tokens_total
    (line,) = SpendLedger(tmp_path / "ledger.sqlite").run_lines("run-a")
    assert (line.tier, line.model_version, line.billed_tokens) == ("api", VERSION, billed)
    assert line.cost_usd == pytest.approx(float(billed * PRICE.per_token))
    assert len(ResultCache(tmp_path / "results.sqlite")) == 12
    assert counters[f"billed_tokens.api.{VERSION}"] == billed


def test_a_second_run_reads_cached_vectors_and_pays_nothing_for_them(
    server: FakeOpenAIServer, tmp_path: Path,
) -> None:
    docs = [routed(f"d{i}", listing(i)) for i in range(8)]
    vectors: dict[str, list[float]] = {}

    def keep(items: Sequence[EmbeddedDocument]) -> None:
        assert len(items) == 8

    run_stage(durable(server, tmp_path, "run-a"), docs, embedded=keep, fallback=ids(set()), dead=ids(set()))
    first_bill = server.stats().billed_tokens_total
    cache = ResultCache(tmp_path / "results.sqlite")
    key = CacheKey(VERSION, MODEL)
    vectors = {d.id: cache.get_many(key, [d.scored.document.text])[0].vector for d in docs}
    server.reset()

    def free_and_same(items: Sequence[EmbeddedDocument]) -> None:
        assert sorted(d.document.id for d in items) == sorted(vectors)
        for d in items:
            assert d.billed_tokens == 0 and d.cost_usd == 0.0
            assert d.vector == pytest.approx(vectors[d.document.id], abs=1e-6)

    counters = run_stage(durable(server, tmp_path, "run-b"), docs, embedded=free_and_same,
                         fallback=ids(set()), dead=ids(set()))

    assert first_bill > 0 and server.stats().requests_total == 0
    assert counters[f"cached.api.{VERSION}"] == 8
    assert SpendLedger(tmp_path / "ledger.sqlite").run_lines("run-b") == []


_KILLED_EMBED = """
import sys
from dataclasses import replace
from beam_pipeline.api_embedder import ApiEmbedderConfig
from beam_pipeline.embed_api import ApiBranch, _ApiEmbedFn
from tests.beam_pipeline.test_embed_api import PRICE, LOCAL, VERSION, listing, routed
from tiering.backoff import BackoffPolicy
from tiering.packing import RequestLimits

base_url, tmp = sys.argv[1], sys.argv[2]
config = ApiEmbedderConfig(
    base_url=base_url, api_key="test", model="text-embedding-3-small", provider="fake",
    limits=RequestLimits(4, 300_000, 40), requests_per_minute=6000, tokens_per_minute=1_000_000,
    max_in_flight=4, timeout_s=30.0, backoff=BackoffPolicy(base_s=0.01, cap_s=0.05),
    breaker_failure_threshold=5, breaker_reset_after_s=60.0, price=PRICE)
fn = _ApiEmbedFn(ApiBranch(VERSION, config, PRICE, "local", LOCAL, run_id="killed",
                           ledger_path=tmp + "/ledger.sqlite", result_cache_path=tmp + "/results.sqlite"))
fn.setup()
print("READY", flush=True)
list(fn.process([routed(f"d{i}", listing(i)) for i in range(200)]))
print("FINISHED", flush=True)
"""


@pytest.mark.slow
def test_a_killed_embed_leaves_every_billed_reply_in_the_ledger_and_the_rerun_pays_only_the_rest(
    server: FakeOpenAIServer, tmp_path: Path,
) -> None:
    # A separate process embeds 200 documents (4 a request, 4 requests in flight, 50 ms a
    # reply) and is SIGKILLed halfway. What it was billed must be in the ledger and its
    # vectors in the cache, but for at most the requests in flight; a second run over the
    # same documents pays for exactly those not in the cache.
    server.configure(latency_s=0.05)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_EMBED, server.base_url, str(tmp_path)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "READY"
        deadline = time.monotonic() + 120
        while server.stats().billed_inputs_by_model.get(MODEL, 0) < 80:
            assert child.poll() is None and time.monotonic() < deadline, "the child ended early"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    # The kill leaves requests being served for a dead client (billed all the same, as a
    # provider bills them); let the server finish them before reading its bill and resetting
    # it for the re-run.
    server.wait_idle()
    killed = server.stats()
    in_flight = 4 * 4  # requests in flight x inputs per request
    texts = [listing(i) for i in range(200)]
    cache = ResultCache(tmp_path / "results.sqlite")
    hits = cache.get_many(CacheKey(VERSION, MODEL), texts)
    (line,) = SpendLedger(tmp_path / "ledger.sqlite").run_lines("killed")
    paid_inputs = killed.billed_inputs_by_model[MODEL]
    assert 80 <= paid_inputs < 200  # it really died halfway
    assert paid_inputs - in_flight <= len(hits) <= paid_inputs
    cached = sum(hit.billed_tokens for hit in hits.values())
    # the ledger is written first: it holds every cached reply, and at most the one reply
    # whose vectors the kill kept from the cache
    assert cached <= line.billed_tokens <= cached + 4 * 40
    assert killed.billed_tokens_total - line.billed_tokens <= in_flight * 40

    server.reset()
    docs = [routed(f"d{i}", t) for i, t in enumerate(texts)]
    run_stage(durable(server, tmp_path, "rerun"), docs, embedded=ids({f"d{i}" for i in range(200)}),
              fallback=ids(set()), dead=ids(set()))
    missing = [t for i, t in enumerate(texts) if i not in hits]
    assert server.stats().billed_tokens_total == sum(billed_tokens(t, server.config) for t in missing)
    assert server.stats().billed_inputs_by_model == {MODEL: len(missing)}


def test_the_stage_reports_its_progress_as_replies_arrive(server: FakeOpenAIServer, tmp_path: Path) -> None:
    from beam_pipeline.progress import read_progress
    from beam_pipeline.telemetry import ModelSeries, TelemetryContext
    from tiering.settings import TelemetrySettings

    ctx = TelemetryContext(TelemetrySettings(), "run-p", (ModelSeries("api", VERSION, "fake", MODEL),),
                           str(tmp_path / "progress"))
    server.configure(fail_next=[429], fault_retry_after_s=0.05)
    docs = [routed(f"d{i}", listing(i)) for i in range(9)]
    api = replace(branch(server, limits=RequestLimits(4, 300_000, PER_INPUT)), telemetry=ctx)
    run_stage(api, docs, embedded=ids({f"d{i}" for i in range(9)}), fallback=ids(set()), dead=ids(set()))

    progress = read_progress(str(tmp_path / "progress"))
    stats = server.stats()
    assert progress.api_documents == 9 and progress.api_tokens == stats.billed_tokens_total
    assert progress.api_cost_usd == pytest.approx(float(stats.billed_tokens_total * PRICE.per_token))
    assert progress.api_requests == stats.requests_total and progress.api_429 == 1
