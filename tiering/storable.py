"""Whether an embedded document can be written to a vector store at all.

The sinks check each document before it joins a batch, so one document that no store can
encode (text that is not valid Unicode, a vector with NaN) is dead-lettered on its own and
never takes the good documents of its batch down with it. Input validation already refuses
such text; this is the last line before the store, for documents from any other path.
"""

from __future__ import annotations

import math

from tiering.documents import EmbeddedDocument

__all__ = ["unstorable_reason"]


def _bad_text(name: str, text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"its {name} is not valid Unicode (U+{ord(text[exc.start]):04X} at character "
                f"{exc.start}), which no store can encode")
    return None


def unstorable_reason(doc: EmbeddedDocument) -> str | None:
    """Why ``doc`` cannot be stored, or None when it can."""
    d = doc.document
    for name, text in (("id", d.id), ("text", d.text), ("source", d.source), ("metadata", d.metadata_json),
                       ("content hash", d.hash), ("model version", doc.model_version),
                       ("model name", doc.model_name), ("route reason", doc.route_reason)):
        reason = _bad_text(name, text)
        if reason is not None:
            return reason
    if not doc.vector:
        return "its vector is empty"
    if not all(math.isfinite(x) for x in doc.vector):
        return "its vector holds NaN or infinite values (the model failed on it)"
    return None
