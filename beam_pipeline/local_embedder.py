"""The local tier's backend: a sentence-transformers model on torch (CUDA when present).

Loading is lazy (``load_local_model``) so importing this module or building the pipeline
graph never imports torch. Chunks are sized by the conservative estimate, then re-checked
with the model's real tokenizer, so nothing is truncated silently by the model.
No retries on this path: a local failure is deterministic and goes to the dead-letter output.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tiering.chunking import chunk_text, split_to_fit
from tiering.errors import ConfigError

__all__ = ["LocalModelSpec", "LoadedLocalModel", "resolve_model_path", "load_local_model", "precision_plan"]

_log = logging.getLogger(__name__)
_SPECIAL_TOKENS = 2  # [CLS] and [SEP]


@dataclass(frozen=True, slots=True)
class LocalModelSpec:
    model: str
    device: str
    precision: str
    batch_size: int
    max_input_tokens: int


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


def precision_plan(device: str, precision: str) -> str:
    """How ``local.precision`` applies on ``device``: 'fp32' (as loaded), 'fp16' or 'bf16'
    (weights cast), or 'bf16-autocast' (CPU: fp32 weights, bf16 matmuls).

    fp16 on CPU is refused rather than ignored: torch runs few CPU kernels in half precision
    (slow where present, missing elsewhere), and bf16 autocast is the fast CPU choice.
    """
    if device == "cpu":
        if precision == "fp16":
            raise ConfigError(
                "local.precision 'fp16' is not supported on the CPU (local.device resolved to "
                "'cpu'); use 'bf16' (bf16 autocast, the fast CPU choice), 'fp32' or 'auto'",
                stage="embed",
            )
        return "bf16-autocast" if precision in ("auto", "bf16") else "fp32"
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    return precision


class LoadedLocalModel:
    """A loaded model plus the chunk-and-aggregate logic around it."""

    def __init__(self, spec: LocalModelSpec) -> None:
        from sentence_transformers import SentenceTransformer

        self.spec = spec
        self.device = _pick_device(spec.device)
        self.precision = precision_plan(self.device, spec.precision)
        path = resolve_model_path(spec.model)
        self.model = SentenceTransformer(path, device=self.device)
        self._cast_weights()
        self.max_tokens = min(spec.max_input_tokens, int(self.model.max_seq_length))
        self.dimension = int(self.model.get_embedding_dimension())
        self.tokenizer = self.model.tokenizer
        _log.info("local model %s loaded on %s in %s (%d dims, %d max tokens)",
                  spec.model, self.device, self.precision, self.dimension, self.max_tokens)

    def _cast_weights(self) -> None:
        import torch

        if self.precision == "fp16":
            self.model.half()
        elif self.precision == "bf16":
            self.model.to(torch.bfloat16)

    def _autocast(self) -> AbstractContextManager[Any]:
        import torch

        if self.precision == "bf16-autocast":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def chunk(self, text: str) -> list[str]:
        budget = self.max_tokens - _SPECIAL_TOKENS
        rough = chunk_text(text, budget)
        return split_to_fit(rough, self.max_tokens, self.count_tokens)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """L2-normalized float32 vectors, one row per text."""
        with self._autocast():
            vectors = self.model.encode(
                list(texts),
                batch_size=self.spec.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


def load_local_model(spec: LocalModelSpec) -> LoadedLocalModel:
    return LoadedLocalModel(spec)
