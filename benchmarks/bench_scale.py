"""End-to-end time and peak memory as the corpus grows, and a re-run over unchanged input.

Usage::

    .venv/bin/python -m benchmarks.bench_scale --corpus .bench/corpus-100k.jsonl \\
        [--sizes 1000 10000 100000] [--with-api]

For each size: ``tierembed run`` on the first N documents into a fresh store (wall time,
peak RSS of the whole process tree, documents per second), then the same command again over
the unchanged input (every document must be skipped by the in-pipeline join: nothing
embedded, nothing written, no request paid) and its time as a share of the first run's.
Then a least-squares line through (documents, seconds) of the first runs: time should grow
linearly (fixed start-up + per-document cost) and peak RSS should stay flat.

``--with-api`` sends the manual-page half of the corpus (a routing rule on
``metadata.source``) to the API tier on the fault-free fake OpenAI-compatible server,
started as its own process, so the re-run's "no paid request" is checked against a server
that counts requests; without it every document goes to the local tier.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.bench_local_tier import LOCAL_ONLY
from benchmarks.harness import ROOT, bench_env, linear_fit, prefix, run_cli, write_config
from tests.fakes.openai_server import fetch_stats

__all__ = ["main"]


def _start_fake() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.openai_server", "--port", "0"],
                            cwd=ROOT, env=bench_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"fake server did not start: {line!r}")
    return proc, line.split()[1]


def _settings(base_url: str | None) -> dict[str, Any]:
    if base_url is None:
        return LOCAL_ONLY
    return {
        "routing": {"api_threshold": 1.0,
                    "rules": [{"field": "source", "equals": "man-page", "tier": "api"}]},
        "api": {"endpoint": "custom", "base_url": base_url, "api_key": "bench",
                "models": [{"version": "fake-v1", "model": "text-embedding-3-small",
                            "price_per_million_tokens": 0.02}]},
    }


def _requests(base_url: str | None) -> int:
    if base_url is None:
        return 0
    return fetch_stats(base_url).requests_total  # every request received, paid or not


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / ".bench/corpus-100k.jsonl")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--with-api", action="store_true")
    ap.add_argument("--work", type=Path, default=ROOT / ".bench/scale")
    args = ap.parse_args()
    fake, base_url = _start_fake() if args.with_api else (None, None)
    rows = []
    try:
        for n in args.sizes:
            source = prefix(args.corpus, n, args.work)
            state = args.work / f"state-{n}"
            shutil.rmtree(state, ignore_errors=True)
            cfg = write_config(state.with_suffix(".yaml"), state, _settings(base_url))
            before = _requests(base_url)
            first = run_cli(source, cfg, n)
            paid_first = _requests(base_url) - before
            # coverage mode (the default): an API document is written twice, local and API vector
            targets = sum(t["documents"] for t in first.report["tiers"])
            assert first.report["accounting_ok"] and first.report["documents_valid"] == n, first.report
            assert first.report["written"] == targets >= n, first.report
            again = run_cli(source, cfg, n)
            paid_again = _requests(base_url) - before - paid_first
            rep = again.report
            assert rep["accounting_ok"] and rep["skipped_unchanged"] == n and rep["written"] == 0, rep
            rows.append((n, first, again, paid_first, paid_again))
            print(f"{n:>7} docs: first {first.wall_s:7.1f}s ({n / first.wall_s:6.1f} docs/s), peak RSS "
                  f"{first.peak_rss_mb:6.0f} MB, {paid_first} API requests | re-run {again.wall_s:6.1f}s "
                  f"= {again.wall_s / first.wall_s:.3f} of the first, peak RSS {again.peak_rss_mb:6.0f} MB, "
                  f"{paid_again} API requests, {rep['skipped_unchanged']} skipped", flush=True)
            print(f"         peak RSS by process (MB): {first.peak_breakdown()}; "
                  f"CPU s: {first.cpu_breakdown()}", flush=True)
            shutil.rmtree(state, ignore_errors=True)
    finally:
        if fake is not None:
            fake.terminate()
            fake.wait(timeout=30)
    if len(rows) >= 2:
        fixed, per_doc = linear_fit([(n, first.wall_s) for n, first, *_ in rows])
        print(f"time = {fixed:.1f}s + {per_doc * 1000:.2f} ms/doc (least squares over the first runs)")
        for n, first, *_ in rows:
            predicted = fixed + per_doc * n
            print(f"  {n:>7}: measured {first.wall_s:7.1f}s, line {predicted:7.1f}s "
                  f"({first.wall_s / predicted - 1:+.1%})")
        peaks = [first.peak_rss_mb for _, first, *_ in rows]
        print(f"peak RSS from {rows[0][0]} to {rows[-1][0]} documents: {peaks[0]:.0f} -> {peaks[-1]:.0f} MB "
              f"({(peaks[-1] - peaks[0]) / ((rows[-1][0] - rows[0][0]) / 1000):.1f} MB per 1,000 documents)")


if __name__ == "__main__":
    main()
