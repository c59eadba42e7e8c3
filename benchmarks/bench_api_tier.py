"""The API tier against an honest, hostile OpenAI-compatible server, both directions of
estimate error.

Starts ``tests.fakes.openai_server`` as a separate process with a true sliding window per
key (60 s by default) for requests and tokens, and a token count that is our own estimate
times ``--above`` (the provider counts more than we think, 1.07 by default) or ``--below``
(0.93); over-large requests are refused as OpenAI refuses them ("Request too large", 429).
For each direction it embeds a synthetic listing corpus of about ``--minutes`` windows'
worth of tokens with:

* **ours**: :class:`beam_pipeline.api_embedder.ApiEmbedder` (requests sized to a share of the
  limit, a sliding-window mirror that follows ``x-ratelimit-*``, one retry layer, breaker);
* **naive** (with ``--naive``): what a hand-written step usually does: fixed batches of 20,
  the SDK's own retries (``max_retries=2``), a requests-per-minute pacer and no token
  limiter, 4 threads.

Before each client the server is reset and a "neighbour" on the same key uses ``--preused``
of the token window (the provider is partly used when a run starts). Reported per run:

* ``tpm_ratio``: the provider's window occupancy, averaged over the run after its first
  window (the neighbour's tokens have left by then): tokens admitted in the trailing window
  over the limit, sampled every 0.25 s from the server's admission log. 1.0 is the most a
  client can get out of a sliding window; this is "tokens per minute / TPM".
* ``429_share``: 429 replies over all replies; ``lost``: inputs without a vector at the end;
  ``too_large``: "Request too large" refusals.

Run from the repository root (about 4 minutes per run at the defaults)::

    .venv/bin/python -m benchmarks.bench_api_tier

``--rpm``, ``--tpm``, ``--window-s``, ``--minutes``, ``--latency-s``, ``--above``,
``--below``, ``--naive`` change the setup; results and their reading are in
``benchmarks/README.md``. The goal of issue 11: ``tpm_ratio`` >= 0.95 and ``429_share`` <=
1% for ours in both directions.
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
from tests.fakes.openai_server import FakeServerStats, configure_remote, fetch_stats, reset_remote
from tiering.backoff import BackoffPolicy
from tiering.chunking import estimate_tokens
from tiering.packing import RequestLimits

__all__ = ["RunResult", "main", "window_occupancy"]

MODEL = "text-embedding-3-small"
LIMITS = RequestLimits(max_inputs=2048, max_tokens=300_000, max_tokens_per_input=8192)
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
    direction: str
    ratio: float
    inputs: int
    lost: int
    seconds: float
    billed_tokens: int
    replies: int
    replies_429: int
    too_large: int
    tpm_ratio: float

    @property
    def share_429(self) -> float:
        return self.replies_429 / self.replies if self.replies else 0.0


# ----------------------------------------------------------------------------- corpus


def make_inputs(target_tokens: float, seed: int) -> list[ApiInput]:
    """Listing-like texts of log-uniform length (about 16 to 200 estimated tokens) until
    their estimate reaches ``target_tokens``."""
    rng = random.Random(seed)
    inputs: list[ApiInput] = []
    total = 0
    while total < target_tokens:
        words = int(math.exp(rng.uniform(math.log(12), math.log(150))))
        text = f"Listing {len(inputs)}: " + " ".join(rng.choice(_WORDS) for _ in range(words)) + "."
        inputs.append(ApiInput(text, estimate_tokens(text)))
        total += inputs[-1].est_tokens
    return inputs


# ----------------------------------------------------------------------------- server


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "tests.fakes.openai_server", "--port", "0",
           "--rpm", str(args.rpm), "--tpm", str(args.tpm), "--window-s", str(args.window_s),
           "--token-count", "estimate", "--latency-s", str(args.latency_s), "--seed", str(args.seed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("LISTENING "):
        proc.terminate()
        raise RuntimeError(f"fake server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def prepare(base_url: str, args: argparse.Namespace, ratio: float) -> None:
    """A fresh server counting ``ratio`` x our estimate, with a neighbour's usage in the
    window (large requests on the same key)."""
    reset_remote(base_url)
    configure_remote(base_url, token_ratio=ratio)
    client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
    target, used = int(args.tpm * args.preused), 0
    while target - used >= 2000:
        reply = client.embeddings.create(model=MODEL, input=["w " * 1800])
        used += reply.usage.prompt_tokens
    client.close()


# ----------------------------------------------------------------------------- clients


def _config(base_url: str, args: argparse.Namespace) -> ApiEmbedderConfig:
    return ApiEmbedderConfig(
        base_url=base_url, api_key="test", model=MODEL, provider="fake", limits=LIMITS,
        requests_per_minute=args.rpm, tokens_per_minute=args.tpm, max_in_flight=4,
        timeout_s=30.0, backoff=BackoffPolicy(base_s=0.25, cap_s=5.0),
        breaker_failure_threshold=8, breaker_reset_after_s=5.0, window_s=args.window_s,
    )


def run_ours(base_url: str, inputs: Sequence[ApiInput], args: argparse.Namespace) -> int:
    embedder = ApiEmbedder(_config(base_url, args))
    try:
        outcome = embedder.embed(inputs)
    finally:
        embedder.close()
    return len(inputs) - len(outcome.vectors)


def run_naive(base_url: str, inputs: Sequence[ApiInput], args: argparse.Namespace) -> int:
    """4 threads sending fixed batches of 20 one at a time at their share of the RPM limit,
    SDK retries on (it waits out each retry-after)."""
    client = openai.OpenAI(base_url=base_url, api_key="test", timeout=30.0)  # max_retries=2
    queue: Queue[list[str]] = Queue()
    for start in range(0, len(inputs), NAIVE_BATCH):
        queue.put([i.text for i in inputs[start:start + NAIVE_BATCH]])
    lost: list[int] = []
    workers = 4

    def worker() -> None:
        interval, next_at = args.window_s / (args.rpm / workers), time.monotonic()
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

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    return sum(lost)


# ----------------------------------------------------------------------------- measure


def window_occupancy(admitted: Sequence[tuple[float, int]], start: float, end: float,
                     window_s: float, limit: int, step_s: float = 0.25) -> float:
    """Mean over ``[start, end]`` of the tokens admitted in the trailing window, over the
    limit: how full a client kept the provider's window (1.0 at most)."""
    if end <= start:
        return float("nan")
    samples, t = [], start
    while t <= end:
        samples.append(sum(n for at, n in admitted if t - window_s < at <= t) / limit)
        t += step_s
    return sum(samples) / len(samples)


def measure(
    name: str,
    run: Callable[[str, Sequence[ApiInput], argparse.Namespace], int],
    base_url: str,
    direction: str,
    ratio: float,
    args: argparse.Namespace,
) -> RunResult:
    inputs = make_inputs(args.minutes * args.tpm / ratio, args.seed)
    prepare(base_url, args, ratio)
    before: FakeServerStats = fetch_stats(base_url)
    t0_server = before.admitted[-1][0] if before.admitted else 0.0  # the neighbour's last
    started = time.monotonic()
    lost = run(base_url, inputs, args)
    seconds = time.monotonic() - started
    stats = fetch_stats(base_url)
    ours = stats.admitted[len(before.admitted):]
    by_status = {k: v - before.responses_by_status.get(k, 0) for k, v in stats.responses_by_status.items()}
    end = ours[-1][0] if ours else t0_server
    occupancy = window_occupancy(stats.admitted, t0_server + args.window_s, end, args.window_s, args.tpm)
    return RunResult(
        client=name, direction=direction, ratio=ratio, inputs=len(inputs), lost=lost,
        seconds=round(seconds, 1), billed_tokens=stats.billed_tokens_total - before.billed_tokens_total,
        replies=sum(by_status.values()), replies_429=by_status.get(429, 0),
        too_large=stats.rate_limited.get("too_large", 0), tpm_ratio=round(occupancy, 4),
    )


# ----------------------------------------------------------------------------- report


def print_table(results: Sequence[RunResult]) -> None:
    print(f"{'client':<7} {'provider':<16} {'inputs':>7} {'lost':>5} {'seconds':>8} {'billed':>9} "
          f"{'replies':>8} {'429s':>5} {'429 share':>9} {'too large':>9} {'tpm_ratio':>9}")
    for r in results:
        provider = f"{r.direction} ({r.ratio:g}x)"
        print(f"{r.client:<7} {provider:<16} {r.inputs:>7} {r.lost:>5} {r.seconds:>8.1f} "
              f"{r.billed_tokens:>9} {r.replies:>8} {r.replies_429:>5} {r.share_429:>9.2%} "
              f"{r.too_large:>9} {r.tpm_ratio:>9.3f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rpm", type=int, default=120)
    parser.add_argument("--tpm", type=int, default=60_000)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--minutes", type=float, default=3.5,
                        help="windows' worth of tokens in the corpus (the run lasts about as long)")
    parser.add_argument("--above", type=float, default=1.07, help="provider count / our estimate")
    parser.add_argument("--below", type=float, default=0.93)
    parser.add_argument("--latency-s", type=float, default=0.05)
    parser.add_argument("--preused", type=float, default=0.5,
                        help="share of the token window a neighbour uses before each run")
    parser.add_argument("--naive", action="store_true",
                        help="also run the naive client (above only), as the baseline")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    proc, base_url = start_server(args)
    try:
        results = [measure("ours", run_ours, base_url, "above", args.above, args),
                   measure("ours", run_ours, base_url, "below", args.below, args)]
        if args.naive:
            results.append(measure("naive", run_naive, base_url, "above", args.above, args))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"fake server: RPM {args.rpm}, TPM {args.tpm} per {args.window_s:g}s sliding window, "
          f"latency {args.latency_s}s, a neighbour used {args.preused:.0%} of the window first")
    print_table(results)
    for r in results:
        print(f"{r.client} ({r.direction}): tokens per minute / TPM {r.tpm_ratio:.3f}, "
              f"429 share {r.share_429:.2%}")
    print(json.dumps([asdict(r) | {"share_429": round(r.share_429, 4)} for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
