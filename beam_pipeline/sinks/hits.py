"""Search results shared by every sink backend.

A hit is one document found in ONE model version's vector space; its ``score`` is the
cosine similarity in that space and is only comparable with hits of the same version
(fuse across versions by rank or with calibrated scores, never by raw score).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SearchHit"]


@dataclass(frozen=True, slots=True)
class SearchHit:
    id: str
    score: float
    text: str
    model_version: str
    tier: str
    metadata_json: str
