"""The API tier against a rate-limited, fault-injecting OpenAI-compatible server.

Starts ``tests.fakes.openai_server`` as a separate process with RPM and TPM limits, 10%
injected 5xx and a fixed reply latency, then embeds the same synthetic corpus with:

* **ours**: :class:`beam_pipeline.api_embedder.ApiEmbedder` (token packing, RPM + TPM
  buckets that follow the provider's headers, one retry layer, breaker);
* **naive**: what a hand-written Beam step usually does (Beam's own OpenAI handler): the
  SDK's default retries (``max_retries=2``), fixed batches of 20 inputs, a requests-per-
  minute limiter and no token limiter, one request at a time per worker, 4 workers (as
  many as ours keeps requests in flight);
* **pipeline**: ``EmbedApi`` inside a Beam ``TestPipeline`` on the DirectRunner over the
  first ``--pipeline-docs`` inputs (0 skips it), to show what Beam's batching does to the
  same backend.

Before each run the server is reset and a "neighbour" uses most of the token bucket (the
provider is already partly used when we start); a one-token request then reads the tokens
left from ``x-ratelimit-remaining-tokens``, and the run's clock starts when it is sent.
Reported per client:

* ``tpm_ratio``: sustained billed tokens per minute over the TPM limit, with the tokens
  that were already in the bucket at the start taken out:
  ``(billed - remaining_at_start) / minutes / TPM`` (1.0 is the provider's refill rate);
* ``raw_ratio``: ``billed / minutes / TPM`` without that correction;
* ``429_share``: 429 replies over all replies; ``lost``: inputs without a vector at the end.

Run from the repository root (about 2 minutes on 2 cores)::

    .venv/bin/python -m benchmarks.bench_api_tier

``--docs``, ``--tpm``, ``--rpm``, ``--error-rate``, ``--latency-s``, ``--naive-workers``
change the setup; results and their reading are in ``benchmarks/README_api.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from queue import Empty, Queue

import openai

from beam_pipeline.api_embedder import ApiEmbedder, ApiEmbedderConfig, ApiInput
from tests.fakes.openai_server import configure_remote, fetch_stats, reset_remote
from tiering.backoff import BackoffPolicy
from tiering.chunking import chunk_text, estimate_tokens
from tiering.packing import RequestLimits

__all__ = ["RunResult", "main"]

MODEL = "text-embedding-3-small"
# The benchmark's model card: smaller per-request limits than OpenAI's (2,048 inputs,
# 300,000 tokens), so a one-minute run at 1M TPM makes a few hundred requests and a 1%
# 429 bound means something. The fake enforces the same limits (an over-limit request
# would come back 400 and be counted).
LIMITS = RequestLimits(max_inputs=256, max_tokens=4096, max_tokens_per_input=1024)
NAIVE_BATCH = 20
_WORDS = (
    "bright spacious apartment garden kitchen renovated station schools yield rental "
    "vacancy zoning ordinance mortgage covenant permit penalty district freehold lease "
    "townhouse balcony parking heating insulation energy rating price asking offer "
    "market analysis office retail logistics warehouse investor portfolio income"
).split()


@dataclass(frozen=True)
class RunResult:
    client: str
    inputs: int
    lost: int
    seconds: float
    billed_tokens: int
    start_remaining_tokens: int
    replies: int
    replies_429: int
    replies_5xx: int
    tpm_ratio: float
    raw_ratio: float

    @property
    def share_429(self) -> float:
        return self.replies_429 / self.replies if self.replies else 0.0


# ----------------------------------------------------------------------------- corpus


def make_texts(n: int, seed: int) -> list[str]:
    """Listing-like texts of log-uniform length (about 16 to 200 estimated tokens)."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        words = int(math.exp(rng.uniform(math.log(12), math.log(150))))
        body = " ".join(rng.choice(_WORDS) for _ in range(words))
        texts.append(f"Listing {i}: {body}.")
    return texts


def make_inputs(texts: Sequence[str]) -> list[ApiInput]:
    chunks = [c for t in texts for c in chunk_text(t, LIMITS.max_tokens_per_input)]
    return [ApiInput(c, estimate_tokens(c)) for c in chunks]


# ----------------------------------------------------------------------------- server


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-m", "tests.fakes.openai_server", "--port", "0",
        "--rpm", str(args.rpm), "--tpm", str(args.tpm), "--seed", str(args.seed),
        "--error-rate", str(args.error_rate), "--latency-s", str(args.latency_s),
        "--max-inputs-per-request", str(LIMITS.max_inputs),
        "--max-tokens-per-request", str(LIMITS.max_tokens),
        "--max-tokens-per-input", str(LIMITS.max_tokens_per_input),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("LISTENING "):
        proc.terminate()
        raise RuntimeError(f"fake server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def neighbour_uses(base_url: str, tpm: int, share: float) -> tuple[int, float]:
    """Use ``share`` of the token bucket with big requests, then read what is left.

    The reading is a one-token request sent at the returned moment: the bucket held at most
    the reported remaining tokens (plus that one) then, so the run's clock starts there."""
    client = openai.OpenAI(base_url=base_url, api_key="neighbour", max_retries=0)
    used, target = 0, int(tpm * share)
    while target - used >= 8000:
        take = min(240_000, target - used)
        reply = client.embeddings.create(model=MODEL, input=["w " * 8000] * (take // 8000))
        used += reply.usage.prompt_tokens
    at = time.monotonic()
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=["w"])
    client.close()
    return int(raw.headers["x-ratelimit-remaining-tokens"]) + 1, at


def prepare(base_url: str, args: argparse.Namespace) -> tuple[int, float]:
    """Fresh server, a neighbour's usage, then the benchmark's faults and limits.

    Returns the tokens left in the provider's bucket and the moment they were reported:
    the run's clock starts there, so the refill while we reconfigure counts against us."""
    reset_remote(base_url)
    configure_remote(base_url, error_rate=0.0, latency_s=0.0,
                     max_tokens_per_request=300_000, max_tokens_per_input=8192)
    remaining, at = neighbour_uses(base_url, args.tpm, args.preused)
    configure_remote(base_url, error_rate=args.error_rate, latency_s=args.latency_s,
                     max_tokens_per_request=LIMITS.max_tokens,
                     max_tokens_per_input=LIMITS.max_tokens_per_input)
    return remaining, at


# ----------------------------------------------------------------------------- clients


def _config(base_url: str, args: argparse.Namespace) -> ApiEmbedderConfig:
    return ApiEmbedderConfig(
        base_url=base_url, api_key="test", model=MODEL, provider="fake", limits=LIMITS,
        requests_per_minute=args.rpm, tokens_per_minute=args.tpm, max_in_flight=4,
        timeout_s=30.0, backoff=BackoffPolicy(base_s=0.25, cap_s=5.0),
        breaker_failure_threshold=8, breaker_reset_after_s=5.0,
    )


def run_ours(base_url: str, inputs: Sequence[ApiInput], args: argparse.Namespace) -> int:
    embedder = ApiEmbedder(_config(base_url, args))
    try:
        outcome = embedder.embed(inputs)
    finally:
        embedder.close()
    return len(inputs) - len(outcome.vectors)


def run_naive(base_url: str, inputs: Sequence[ApiInput], args: argparse.Namespace) -> int:
    """``--naive-workers`` threads (like Beam running several DoFn instances), each sending
    fixed batches of 20 one at a time at its share of the RPM limit, SDK retries on."""
    client = openai.OpenAI(base_url=base_url, api_key="test", timeout=30.0)  # max_retries=2
    batches = [[i.text for i in inputs[s : s + NAIVE_BATCH]] for s in range(0, len(inputs), NAIVE_BATCH)]
    queue: Queue[list[str]] = Queue()
    for batch in batches:
        queue.put(batch)
    lost: list[int] = []

    def worker() -> None:
        interval, next_at = 60.0 / (args.rpm / args.naive_workers), time.monotonic()
        while True:
            try:
                batch = queue.get_nowait()
            except Empty:
                return
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = time.monotonic() + interval
            try:
                client.embeddings.create(model=MODEL, input=batch)
            except openai.APIError:
                lost.append(len(batch))

    threads = [threading.Thread(target=worker) for _ in range(args.naive_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    return sum(lost)


def run_pipeline(base_url: str, inputs: Sequence[ApiInput], args: argparse.Namespace) -> int:
    """EmbedApi in a Beam pipeline (DirectRunner): each input text is one document."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.test_pipeline import TestPipeline

    from beam_pipeline.embed_api import ApiBranch, EmbedApi
    from tiering.documents import Document, RoutedDocument, ScoredDocument, Tier
    from tiering.pricing import price_for

    docs = [
        RoutedDocument(ScoredDocument(Document(f"d{n}", i.text, "bench"), 1.0, i.est_tokens),
                       Tier.API, "bench-api", "benchmark")
        for n, i in enumerate(inputs)
    ]
    branch = ApiBranch("bench-api", _config(base_url, args), price_for(MODEL), "local",
                       (("local-v", 1.0),))
    p = TestPipeline()
    _ = p | beam.Create(docs, reshuffle=False) | EmbedApi(branch)
    result = p.run()
    result.wait_until_finish()
    query = result.metrics().query(MetricsFilter().with_name("embedded.api.bench-api"))
    embedded = sum(c.committed or c.attempted or 0 for c in query["counters"])
    return len(inputs) - embedded


def measure(
    name: str,
    run: Callable[[str, Sequence[ApiInput], argparse.Namespace], int],
    base_url: str,
    inputs: Sequence[ApiInput],
    args: argparse.Namespace,
) -> RunResult:
    remaining, t0 = prepare(base_url, args)
    before = fetch_stats(base_url)
    billed_before, by_status_before = before.billed_tokens_total, before.responses_by_status
    lost = run(base_url, inputs, args)
    seconds = time.monotonic() - t0
    stats = fetch_stats(base_url)
    by_status = {k: v - by_status_before.get(k, 0) for k, v in stats.responses_by_status.items()}
    billed = stats.billed_tokens_total - billed_before
    minutes = seconds / 60.0
    return RunResult(
        client=name, inputs=len(inputs), lost=lost, seconds=round(seconds, 2),
        billed_tokens=billed, start_remaining_tokens=remaining,
        replies=sum(by_status.values()), replies_429=by_status.get(429, 0),
        replies_5xx=sum(v for k, v in by_status.items() if k >= 500),
        tpm_ratio=round((billed - remaining) / minutes / args.tpm, 4),
        raw_ratio=round(billed / minutes / args.tpm, 4),
    )


# ----------------------------------------------------------------------------- report


def print_table(results: Sequence[RunResult]) -> None:
    print(f"{'client':<9} {'inputs':>7} {'lost':>6} {'seconds':>8} {'billed':>9} "
          f"{'replies':>8} {'429s':>6} {'429 share':>9} {'5xx':>5} {'tpm_ratio':>9} {'raw_ratio':>9}")
    for r in results:
        print(f"{r.client:<9} {r.inputs:>7} {r.lost:>6} {r.seconds:>8.1f} {r.billed_tokens:>9} "
              f"{r.replies:>8} {r.replies_429:>6} {r.share_429:>9.2%} {r.replies_5xx:>5} "
              f"{r.tpm_ratio:>9.3f} {r.raw_ratio:>9.3f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=16_000)
    parser.add_argument("--naive-docs", type=int, default=0,
                        help="the naive client gets the first N of the same inputs (0: all)")
    parser.add_argument("--pipeline-docs", type=int, default=8_000,
                        help="also run EmbedApi in a Beam TestPipeline on this many inputs (0: skip)")
    parser.add_argument("--naive-workers", type=int, default=4,
                        help="concurrent naive workers (ours keeps up to 4 requests in flight)")
    parser.add_argument("--rpm", type=int, default=3000)
    parser.add_argument("--tpm", type=int, default=1_000_000)
    parser.add_argument("--error-rate", type=float, default=0.10)
    parser.add_argument("--latency-s", type=float, default=0.05)
    parser.add_argument("--preused", type=float, default=0.9,
                        help="share of the token bucket a neighbour uses before each run")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = make_inputs(make_texts(args.docs, args.seed))
    proc, base_url = start_server(args)
    try:
        results = [measure("ours", run_ours, base_url, inputs, args)]
        naive_inputs = inputs[: args.naive_docs] if args.naive_docs else inputs
        results.append(measure("naive", run_naive, base_url, naive_inputs, args))
        if args.pipeline_docs:
            docs = inputs[: args.pipeline_docs]
            results.append(measure("pipeline", run_pipeline, base_url, docs, args))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"fake server: RPM {args.rpm}, TPM {args.tpm}, {args.error_rate:.0%} injected 5xx, "
          f"latency {args.latency_s}s, limits {LIMITS}, neighbour used {args.preused:.0%} first")
    print_table(results)
    ours, naive = results[0], results[1]
    print(f"tokens per minute / TPM limit: ours {ours.tpm_ratio:.3f}, naive {naive.tpm_ratio:.3f}")
    print(json.dumps([asdict(r) | {"share_429": round(r.share_429, 4)} for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
