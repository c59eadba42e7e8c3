"""Typed records that travel between pipeline stages.

Every stage of the Beam pipeline passes one of these frozen, slotted dataclasses to the
next; they pickle cleanly and carry no Beam, Prefect or vendor type. Free-form user
metadata lives in :attr:`Document.metadata` and is never read for control flow except
through declared routing rules.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "Tier",
    "Document",
    "ScoredDocument",
    "RoutedDocument",
    "Chunk",
    "EmbeddedDocument",
    "DeadLetter",
    "content_hash",
]


class Tier(StrEnum):
    """Where a document is embedded: the local model or the paid external API."""

    LOCAL = "local"
    API = "api"


def content_hash(text: str) -> str:
    """Stable hash of a document's text, used to skip unchanged documents on re-runs."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Document:
    """A validated input document.

    ``metadata`` is the user's free-form fields serialized as canonical JSON (a string, so
    the record stays hashable and picklable); read it with :meth:`metadata_dict`.
    """

    id: str
    text: str
    source: str
    metadata_json: str = "{}"
    hash: str = ""

    def metadata_dict(self) -> dict[str, object]:
        loaded = json.loads(self.metadata_json)
        return loaded if isinstance(loaded, dict) else {}


@dataclass(frozen=True, slots=True)
class ScoredDocument:
    """A document with its value score in [0, 1] from the cheap classifier.

    ``unchanged`` names the model versions whose stored vector was embedded from this exact
    text (SkipUnchanged sets it from the store): those targets cost nothing and are skipped.
    """

    document: Document
    score: float
    est_tokens: int
    raw_score: float | None = None
    """The classifier's own score when ``score`` was rank-normalised within the run."""
    unchanged: tuple[str, ...] = ()
    paid: tuple[str, ...] = ()  # API versions whose vectors of this text were paid for earlier


@dataclass(frozen=True, slots=True)
class RoutedDocument:
    """A document with the tier and model version it will be embedded with."""

    scored: ScoredDocument
    tier: Tier
    model_version: str
    reason: str
    fell_back: bool = False  # re-targeted to the local tier by the API tier (breaker, budget)
    has_local_target: bool = False  # coverage mode: the document also gets the local vector
    shadow: bool = False  # a shadow version's extra target: never served, never a fallback

    @property
    def id(self) -> str:
        return self.scored.document.id


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a document small enough for the model's input limit."""

    doc_id: str
    index: int
    text: str
    est_tokens: int


@dataclass(frozen=True, slots=True)
class EmbeddedDocument:
    """A document vector ready for the sink.

    ``vector`` is a tuple of floats (L2-normalized). ``n_chunks`` > 1 means the vector is
    the renormalized mean of the chunk vectors. ``billed_tokens`` and ``cost_usd`` are the
    provider-billed figures attributed to this document (0 for the local tier).
    """

    document: Document
    tier: Tier
    model_version: str
    model_name: str
    vector: tuple[float, ...]
    n_chunks: int
    est_tokens: int
    billed_tokens: float = 0.0
    cost_usd: float = 0.0
    score: float = 0.0
    route_reason: str = ""
    fell_back: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that a stage rejected, kept as data so it can be inspected and replayed.

    ``payload`` holds the raw input (or the document's JSON) exactly enough to replay it:
    as text when ``payload_encoding`` is ``"utf-8"``, or the record's raw bytes in base64
    when it was not valid UTF-8 (``"base64"``).
    """

    stage: str
    error_type: str
    message: str
    retryable: bool
    doc_id: str | None = None
    source: str = ""
    payload: str = ""
    tier: str | None = None
    model_version: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    payload_encoding: str = "utf-8"

    def to_json(self) -> str:
        """One JSON line; always encodable as UTF-8 (text that is not, such as a lone
        surrogate from a ``\\ud800`` escape in the input, is written as a JSON escape)."""
        fields = {
            "stage": self.stage,
            "error_type": self.error_type,
            "message": self.message,
            "retryable": self.retryable,
            "doc_id": self.doc_id,
            "source": self.source,
            "tier": self.tier,
            "model_version": self.model_version,
            "extra": dict(self.extra),
            "payload_encoding": self.payload_encoding,
            "payload": self.payload,
        }
        text = json.dumps(fields, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(fields, ensure_ascii=True)
        return text
