"""Throughput of the cheap value classifier on one core.

Generates synthetic documents of mixed kinds (property listings, market analyses,
regulatory text, chat, non-English) and lengths (10 to 3,000 words, log-uniform), then
times, in this one process and on the same documents:

* a trivial length heuristic (``len(text)``), the floor any scorer pays to touch a document;
* bare :func:`tiering.features.extract_features`;
* :meth:`tiering.classifier.ValueClassifier.score_many` with the shipped default;
* :func:`tiering.classifier.train` on the same documents with synthetic labels.

Run from the repository root:
``.venv/bin/python -m benchmarks.bench_classifier [--docs 20000] [--repeat 3]``.
Everything is single-threaded Python; numpy is used only by ``train``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import random
import time
from collections.abc import Callable, Sequence

from tiering.classifier import LabeledExample, load_default, train
from tiering.documents import Document
from tiering.features import extract_features

_LISTING = (
    "Freehold townhouse of {n} m² with a garden, EPC rating {c}. Asking €{p},000; "
    "estimated rental yield {y}% and a cap rate of {r}%. Zoning permits mixed use; "
    "the mortgage offer is at {l}% loan-to-value, {b} bps over base."
)
_ANALYSIS = (
    "Prime office rents rose {y}% year on year while vacancy fell to {r}%. Net operating "
    "income across the portfolio grew to ${p}m and the average cap rate compressed by "
    "{b} bps as lenders returned to the market."
)
_REGULATION = (
    "Pursuant to section {n} of the ordinance, any permit for a building exceeding {l} "
    "sq ft shall comply with the zoning amendment; the municipality may assess a penalty "
    "of up to £{p},000 for each breach of the covenant."
)
_CHAT = (
    "hey, are you coming to the party tonight? I think it will be a lot of fun, and we "
    "can go for a walk after dinner if the weather is nice."
)
_FOREIGN = "Это небольшой текст на русском языке о погоде, о городе и о людях."
_KINDS = (_LISTING, _ANALYSIS, _REGULATION, _CHAT, _FOREIGN)


__all__ = ["main", "make_documents"]

def make_documents(n: int, seed: int) -> list[Document]:
    """``n`` synthetic documents; word counts are log-uniform between 10 and 3,000."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        target_words = int(math.exp(rng.uniform(math.log(10), math.log(3000))))
        parts: list[str] = []
        words = 0
        while words < target_words:
            template = rng.choice(_KINDS)
            sentence = template.format(
                n=rng.randint(30, 400),
                c="ABCDEFG"[rng.randint(0, 6)],
                p=rng.randint(100, 999),
                y=round(rng.uniform(1, 9), 1),
                r=round(rng.uniform(2, 8), 1),
                l=rng.randint(40, 90),
                b=rng.randint(10, 300),
            )
            parts.append(sentence)
            words += sentence.count(" ") + 1
        priority = rng.choice([None, None, None, "high", "low"])
        metadata = json.dumps({"priority": priority} if priority else {"region": "eu"})
        docs.append(Document(f"doc-{i}", " ".join(parts), "bench", metadata))
    return docs


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """Best wall time of ``repeat`` runs (the least disturbed by other processes)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def report(name: str, seconds: float, docs: Sequence[Document], mb: float) -> None:
    n = len(docs)
    print(
        f"{name:<34} {n / seconds:>12,.0f} docs/s {seconds / n * 1e6:>9.1f} µs/doc {mb / seconds:>8.1f} MB/s"
    )


def bench_scoring(docs: Sequence[Document], repeat: int) -> None:
    """Length heuristic vs feature extraction vs scoring, on the same documents."""
    mb = megabytes(docs)
    model = load_default()
    t_len = best_of(repeat, lambda: [min(1.0, len(d.text) / 5000) for d in docs])
    t_feat = best_of(repeat, lambda: [extract_features(d) for d in docs])
    t_score = best_of(repeat, functools.partial(model.score_many, docs))
    report("length heuristic (len(text))", t_len, docs, mb)
    report("extract_features", t_feat, docs, mb)
    report(f"score_many ({model.version})", t_score, docs, mb)
    print(
        f"score_many costs {t_score / t_feat:.2f}x bare feature extraction and "
        f"{t_score / t_len:.0f}x the length heuristic"
    )
    buckets = (("<100 words", 0, 100), ("100-999", 100, 1000), (">=1000", 1000, 10**9))
    for label, lo, hi in buckets:
        bucket = [d for d in docs if lo <= d.text.count(" ") + 1 < hi]
        seconds = best_of(repeat, functools.partial(model.score_many, bucket))
        report(f"  score_many, {label}", seconds, bucket, megabytes(bucket))


def bench_training(docs: Sequence[Document]) -> None:
    """One training run on the documents, labelled by the default model's own decision."""
    model = load_default()
    examples = [LabeledExample(d, float(model.score(d) >= 0.5)) for d in docs]
    start = time.perf_counter()
    result = train(examples)
    print(
        f"train on {len(examples):,} examples: {time.perf_counter() - start:.2f} s "
        f"({result.epochs_run} epochs, holdout accuracy {result.holdout_accuracy:.3f})"
    )


def megabytes(docs: Sequence[Document]) -> float:
    return sum(len(d.text.encode("utf-8")) for d in docs) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-train", action="store_true", help="skip the training run")
    args = parser.parse_args()

    docs = make_documents(args.docs, args.seed)
    words = sorted(d.text.count(" ") + 1 for d in docs)
    print(
        f"{len(docs):,} documents, {megabytes(docs):.1f} MB, words per document: median "
        f"{words[len(words) // 2]:,}, max {words[-1]:,}; Python "
        f"{platform.python_version()} on {platform.machine()}, one thread"
    )
    bench_scoring(docs, args.repeat)
    if not args.no_train:
        bench_training(docs)


if __name__ == "__main__":
    main()
