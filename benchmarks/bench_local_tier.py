"""The local tier against the model's own speed and against Beam's own embedding transform.

Usage::

    .venv/bin/python -m benchmarks.corpus --docs 100000 --apt-lists /tmp/aptlists \\
        --out .bench/corpus-100k.jsonl
    .venv/bin/python -m benchmarks.bench_local_tier --corpus .bench/corpus-100k.jsonl \\
        [--small 1000 --large 4000 --rounds 2 --workers 1 2]

Everything below runs in ONE invocation, on the same machine and the same texts (the first
``--small`` and ``--large`` documents of the corpus), in alternating rounds so machine noise
hits every system alike:

* **ours**: the whole ``tierembed run`` (command line, Prefect flow, Beam pipeline, LanceDB
  writes) with the local tier only (no document may go to the API), a fresh store each time;
  with ``--workers 2`` also under ``direct_running_mode: multi_processing``.
* **plain**: ``SentenceTransformer.encode`` on the same texts at its best precision and
  batch size (found first by ``benchmarks.baselines calibrate``; ``plain-same`` calibrated
  on the chunks it embeds).
* **beam**: Beam's ``MLTransform`` with ``SentenceTransformerEmbeddings`` on the same
  JSONL (``benchmarks.baselines mltransform``).

Throughput is MARGINAL: (large - small) documents over the extra seconds the large run took,
so fixed start-up (Python imports, Prefect, Beam, model load) cancels out; the fixed part of
each system is reported on its own (small-run time minus small / marginal rate). The best
round of each system counts.

What each embeds: ours chunks long documents and embeds every token; plain encode and
MLTransform truncate each text at the model's 256 tokens, so on a corpus with long documents
they do less work. ``plain-same`` and ``beam-same`` embed exactly the chunks ours embeds
(``benchmarks.baselines --same-work``: chunked before their clock starts), so ours divided by
them is the pipeline's own cost; ours divided by ``plain``/``beam`` is what a user sees
against a baseline that drops the tail of long documents. Both ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, bench_env, prefix, run_cli, write_config

__all__ = ["main"]

LOCAL_ONLY = {
    # no rule and a threshold no score reaches: every document goes to the local tier;
    # the API endpoint is never called (no stand-in server is started, no preflight probe)
    "routing": {"api_threshold": 1.0, "rules": [], "score_normalization": "none"},  # raw scores < 1
    "api": {"endpoint": "custom", "base_url": "http://127.0.0.1:9/v1", "preflight": False},
}


def _baseline(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.baselines", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=bench_env(), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _ours(work: Path, files: dict[int, Path], workers: int, round_no: int) -> dict[int, float]:
    times = {}
    for n, path in files.items():
        state = work / f"ours-w{workers}-r{round_no}-{n}"
        shutil.rmtree(state, ignore_errors=True)
        pipeline = (
            {"direct_running_mode": "multi_processing", "direct_num_workers": workers} if workers > 1 else {}
        )
        cfg = write_config(state.with_suffix(".yaml"), state, {**LOCAL_ONLY, "pipeline": pipeline})
        run = run_cli(path, cfg, n)
        report = run.report
        assert report["written"] == n and report["accounting_ok"], report
        times[n] = run.wall_s
        print(
            f"    ours(w={workers}) {n:>6} docs: {run.wall_s:7.1f}s  peak RSS {run.peak_rss_mb:6.0f} MB "
            f"({run.peak_breakdown()}); CPU s: {run.cpu_breakdown()}",
            flush=True,
        )
        shutil.rmtree(state, ignore_errors=True)
    return times


def _calibrate(path: Path, *, same_work: bool) -> dict[str, Any]:
    """Plain encode's best precision and batch size on 800 texts, or on their chunks."""
    cal = _baseline("calibrate", str(path), "--n", "800", *(["--same-work"] if same_work else []))
    what = "the chunks of " if same_work else ""
    print(f"plain encode calibration on {what}{cal['n']} texts ({cal['device']}):")
    for r in cal["results"]:
        print(f"  {r['precision']:>5} batch {r['batch']:>4}: {r['docs_per_s']:7.1f} docs/s")
    best: dict[str, Any] = cal["best"]
    print(f"  best: {best['precision']} batch {best['batch']}", flush=True)
    return best


def _marginal(times: dict[int, float], small: int, large: int) -> tuple[float, float]:
    """(docs/s between small and large, fixed seconds) from one round's timings."""
    rate = (large - small) / max(1e-9, times[large] - times[small])
    return rate, times[small] - small / rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / ".bench/corpus-100k.jsonl")
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--baselines", nargs="+", default=["plain", "plain-same", "beam", "beam-same"],
                    choices=["plain", "plain-same", "beam", "beam-same"],
                    help="*-same: the baseline embeds ours' chunks (same work), not truncated texts")
    ap.add_argument("--work", type=Path, default=ROOT / ".bench/local-tier")
    args = ap.parse_args()
    files = {n: prefix(args.corpus, n, args.work) for n in (args.small, args.large)}

    started = time.time()
    best = _calibrate(files[args.large], same_work=False)
    # plain-same gets its own best batch size: chunks are not the truncated texts
    best_same = _calibrate(files[args.large], same_work=True) if "plain-same" in args.baselines else best

    systems = [f"ours-w{w}" for w in args.workers] + list(args.baselines)
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in systems}
    sizes = [str(args.small), str(args.large)]
    for round_no in range(args.rounds):
        order = systems[round_no % len(systems) :] + systems[: round_no % len(systems)]
        print(f"round {round_no + 1}: {' -> '.join(order)}", flush=True)
        for system in order:
            if system.startswith("ours"):
                times = _ours(args.work, files, int(system.removeprefix("ours-w")), round_no)
            elif system.startswith("plain"):
                same = ["--same-work"] if system.endswith("-same") else []
                cal = best_same if same else best
                out = _baseline("plain", str(files[args.large]), "--sizes", *sizes, "--precision",
                                cal["precision"], "--batch", str(cal["batch"]), *same)
                times = {int(k): v + out["startup_s"] for k, v in out["encode_s"].items()}
                if same:
                    print(f"    chunks embedded: {out['chunks']}", flush=True)
            else:
                same = ["--same-work"] if system.endswith("-same") else []
                out = _baseline("mltransform", str(files[args.large]), "--sizes", *sizes, *same)
                times = {int(k): v + out["startup_s"] for k, v in out["run_s"].items()}
            rate, fixed = _marginal(times, args.small, args.large)
            results[system].append((rate, fixed))
            print(
                f"  {system:>8}: {times[args.small]:7.1f}s / {times[args.large]:7.1f}s -> "
                f"{rate:7.1f} docs/s marginal, fixed {fixed:6.1f}s",
                flush=True,
            )

    best_of = {s: max(r, key=lambda x: x[0]) for s, r in results.items()}
    print(
        f"\nmarginal throughput between {args.small} and {args.large} documents, best of "
        f"{args.rounds} rounds ({(time.time() - started) / 60:.0f} min in all):"
    )
    for s, (rate, fixed) in best_of.items():
        print(f"  {s:>8}: {rate:7.1f} docs/s   fixed start-up {fixed:6.1f}s")
    ours = best_of[f"ours-w{args.workers[0]}"][0]
    names = {"plain": f"plain encode ({best['precision']}, batch {best['batch']}), truncating",
             "plain-same": f"plain encode ({best_same['precision']}, batch {best_same['batch']}), "
                           "same chunks",
             "beam": "Beam MLTransform, truncating", "beam-same": "Beam MLTransform, same chunks"}
    for name in args.baselines:
        print(f"ours / {names[name]}: {ours / best_of[name][0]:.2f}")
    for w in args.workers[1:]:
        print(f"ours {w} workers / 1 worker: {best_of[f'ours-w{w}'][0] / ours:.2f}")


if __name__ == "__main__":
    main()
