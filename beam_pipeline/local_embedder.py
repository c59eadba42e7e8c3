"""The local tier's backend: a sentence-transformers model on torch (CUDA when present).

Loading is lazy (``load_local_model``) so importing this module or building the pipeline
graph never imports torch. Chunks are sized by the conservative estimate, then re-checked
with the model's real tokenizer (one batched call for many documents), so nothing is
truncated silently by the model; the real token counts also place each chunk in its length
bucket (see ``tiering.buckets``).
No retries on this path: a local failure is deterministic and goes to the dead-letter output.

Precision per device (``local.precision: auto``): fp16 weights on CUDA; on the CPU, bf16
autocast only where the CPU multiplies bf16 natively (x86 ``avx512_bf16`` / ``amx_bf16``,
Arm ``bf16``), else fp32. Without those instructions torch emulates bf16 and is several
times SLOWER than fp32 (measured here: an AVX2-only AMD EPYC ran MiniLM 7x slower in
bf16 autocast than in fp32; see benchmarks/README.md).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tiering.chunking import chunk_text, split_to_fit
from tiering.errors import ConfigError

__all__ = ["LocalModelSpec", "LoadedLocalModel", "resolve_model_path", "load_local_model", "precision_plan",
           "cpu_has_native_bf16", "default_batch_size"]

_log = logging.getLogger(__name__)
_SPECIAL_TOKENS = 2  # [CLS] and [SEP]


@dataclass(frozen=True, slots=True)
class LocalModelSpec:
    model: str
    device: str
    precision: str
    batch_size: int | Literal["auto"]  # chunks per model call; "auto": default_batch_size(device)
    max_input_tokens: int
    threads: int | None = None  # torch CPU threads in this worker; None = torch's default


def resolve_model_path(name: str) -> str:
    """A folder path, an installed package bundling a model, or a hub id (as given)."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    module_name = name.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return name
    getter = getattr(module, "get_model_path", None)
    if callable(getter):
        return str(getter())
    model_dir = getattr(module, "MODEL_DIR", None)
    return str(model_dir) if model_dir else name


def _pick_device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 (2), Arm (1)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware (from ``/proc/cpuinfo``'s flags).

    Not Linux, or unreadable: False (fp32 is the safe choice: never slower than emulated
    bf16). torch exposes the same facts only through private functions.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and _BF16_CPU_FLAGS & set(value.split()):
            return True
    return False


def precision_plan(device: str, precision: str, cpu_bf16: bool | None = None) -> str:
    """How ``local.precision`` applies on ``device``: 'fp32' (as loaded), 'fp16' or 'bf16'
    (weights cast), or 'bf16-autocast' (CPU: fp32 weights, bf16 matmuls).

    ``auto`` on the CPU is bf16 autocast only where ``cpu_bf16`` (default: this CPU has
    native bf16, :func:`cpu_has_native_bf16`), else fp32; an explicit 'bf16' is obeyed.
    fp16 on CPU is refused rather than ignored: torch runs few CPU kernels in half precision
    (slow where present, missing elsewhere).
    """
    if device == "cpu":
        if precision == "fp16":
            raise ConfigError(
                "local.precision 'fp16' is not supported on the CPU (local.device resolved to "
                "'cpu'); use 'auto' (bf16 autocast where the CPU has native bf16, else fp32), "
                "'bf16' or 'fp32'",
                stage="embed",
            )
        if precision == "auto":
            native = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
            return "bf16-autocast" if native else "fp32"
        return "bf16-autocast" if precision == "bf16" else "fp32"
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    return precision


def _glibc_malloc_trim() -> Any | None:
    """glibc's ``malloc_trim(size_t pad)``, or None on another C library (musl, macOS, Windows)."""
    try:
        fn = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the C library already loaded
    except (OSError, TypeError):  # Windows: no "main program" handle
        return None
    if fn is not None:
        fn.argtypes = [ctypes.c_size_t]
        fn.restype = ctypes.c_int
    return fn


def default_batch_size(device: str) -> int:
    """``local.batch_size: auto``: chunks per model call on ``device``.

    CPU: 16. Measured on this project's 2-core AVX2 machine with length buckets
    (``benchmarks.bench_local_device``, fp32): 8: 25, 16: 25, 32: 24, 64: 22 docs/s; plain
    ``encode`` peaked at 8, 16 or 32 there depending on the hour, never at 64. A larger batch
    also allocates more attention scores per call (batch x 12 heads x tokens^2 floats: 200 MB
    at 64 x 256 tokens, a quarter of that at 16), which shows in peak memory.
    CUDA: 64 (fills the GPU better; not measured here: no GPU was lent).
    """
    return 16 if device == "cpu" else 64


class LoadedLocalModel:
    """A loaded model plus the chunk-and-aggregate logic around it."""

    def __init__(self, spec: LocalModelSpec) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.device = _pick_device(spec.device)
        self.precision = precision_plan(self.device, spec.precision)
        auto = not isinstance(spec.batch_size, int)
        self.batch_size = default_batch_size(self.device) if auto else int(spec.batch_size)
        path = resolve_model_path(spec.model)
        self.model = SentenceTransformer(path, device=self.device)
        self._cast_weights()
        self.max_tokens = min(spec.max_input_tokens, int(self.model.max_seq_length))
        # sentence-transformers >= 6 names it get_embedding_dimension; 3.x-5.x (allowed by
        # pyproject) only have get_sentence_embedding_dimension
        dimension = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dimension = int(dimension())
        self.tokenizer = self.model.tokenizer
        # Flat memory on the CPU. torch takes each batch's activations (megabytes: 16 x 12
        # heads x 256^2 attention floats is 50 MB) from glibc malloc, whose dynamic mmap
        # threshold soon serves blocks that size from the heap; the freed heap fragments and
        # is kept, so RSS grew with every new batch shape. Returning free pages after every
        # batch: 98 MB of growth after load instead of 428 over 3,000 documents of the model
        # loop alone, 1.02x the time (benchmarks.bench_model_memory; benchmarks/README.md,
        # "Memory of the model loop"). No allocator knob does this: MALLOC_ARENA_MAX did not
        # help, a fixed MALLOC_MMAP_THRESHOLD_ did but cost 10% speed and must be set
        # before the process starts.
        self._trim = _glibc_malloc_trim() if self.device == "cpu" else None
        _log.info("local model %s loaded on %s in %s (%d dims, %d max tokens, batches of %d)",
                  spec.model, self.device, self.precision, self.dimension, self.max_tokens, self.batch_size)

    def _cast_weights(self) -> None:
        import torch

        if self.precision == "fp16":
            self.model.half()
        elif self.precision == "bf16":
            self.model.to(torch.bfloat16)
        else:  # fp32 and bf16 autocast compute from fp32 weights, whatever the checkpoint holds
            self.model.float()

    def _autocast(self) -> AbstractContextManager[Any]:
        import torch

        if self.precision == "bf16-autocast":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def count_tokens(self, text: str) -> int:
        # verbose=False: counting a text longer than the model's limit is the point here, not
        # a mistake; transformers would warn "Token indices sequence length is longer than..."
        ids = self.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return len(ids)

    def chunk(self, text: str) -> list[str]:
        return [c for c, _ in self.chunk_many([text])[0]]

    def chunk_many(self, texts: Sequence[str]) -> list[list[tuple[str, int]]]:
        """Each text's chunks with their real token counts (special tokens included).

        Chunks are cut by the conservative estimate, then ALL of them are counted by the
        real tokenizer in one batched call; the rare chunk still over the limit is re-split
        with exact counts.
        """
        budget = self.max_tokens - _SPECIAL_TOKENS
        rough = [chunk_text(t, budget) for t in texts]
        flat = [c for chunks in rough for c in chunks]
        counts = [len(ids) for ids in self.tokenizer(flat, add_special_tokens=True, truncation=False,
                                                      verbose=False)["input_ids"]] if flat else []
        out: list[list[tuple[str, int]]] = []
        pos = 0
        for chunks in rough:
            mine: list[tuple[str, int]] = []
            for chunk in chunks:
                n = counts[pos]
                pos += 1
                if n <= self.max_tokens:
                    mine.append((chunk, n))
                else:
                    mine += [(c, self.count_tokens(c))
                             for c in split_to_fit([chunk], self.max_tokens, self.count_tokens)]
            out.append(mine)
        return out

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """L2-normalized float32 vectors, one row per text."""
        with self._autocast():
            vectors = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        out = np.asarray(vectors, dtype=np.float32)
        if self._trim is not None:
            self._trim(0)
        return out


def load_local_model(spec: LocalModelSpec) -> LoadedLocalModel:
    return LoadedLocalModel(spec)
