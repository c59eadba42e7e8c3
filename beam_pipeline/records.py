"""Helpers that build the records the embedding stages emit (shared by both tiers)."""

from __future__ import annotations

import json

import numpy as np
import numpy.typing as npt

from tiering.documents import Document, EmbeddedDocument, RoutedDocument

__all__ = ["doc_payload", "document_payload", "make_embedded"]


def document_payload(doc: Document) -> str:
    """The document as replayable JSONL (id, text, metadata); see flows.replay."""
    return json.dumps(
        {"id": doc.id, "text": doc.text, "metadata": json.loads(doc.metadata_json)}, ensure_ascii=False
    )


def doc_payload(routed: RoutedDocument) -> str:
    return document_payload(routed.scored.document)


def make_embedded(
    routed: RoutedDocument,
    model_name: str,
    vector: npt.ArrayLike,
    n_chunks: int,
    *,
    billed_tokens: float = 0.0,
    cost_usd: float = 0.0,
    fell_back: bool | None = None,
) -> EmbeddedDocument:
    return EmbeddedDocument(
        document=routed.scored.document,
        tier=routed.tier,
        model_version=routed.model_version,
        model_name=model_name,
        vector=tuple(float(x) for x in np.asarray(vector, dtype=np.float32).ravel()),
        n_chunks=n_chunks,
        est_tokens=routed.scored.est_tokens,
        billed_tokens=billed_tokens,
        cost_usd=cost_usd,
        score=routed.scored.score,
        route_reason=routed.reason,
        fell_back=routed.fell_back if fell_back is None else fell_back,
    )
