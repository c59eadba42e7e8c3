"""Stable A/B assignment of documents to model versions.

A document always lands on the same version for the same set of weights: the assignment
hashes the document id with a per-tier salt onto [0, 1) and walks the cumulative weights.
Changing one version's weight moves only the documents in the changed slice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["stable_unit", "assign_version"]


def stable_unit(key: str, salt: str) -> float:
    """A uniform-looking number in [0, 1) fixed by ``key`` and ``salt``."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_version(doc_id: str, versions: Sequence[tuple[str, float]], salt: str) -> str:
    """Pick a version for ``doc_id`` from ``(version, weight)`` pairs (weights need not sum to 1)."""
    live = [(v, w) for v, w in versions if w > 0]
    if not live:
        raise ValueError("no model version has a positive traffic weight")
    if len(live) == 1:
        return live[0][0]
    total = sum(w for _, w in live)
    point = stable_unit(doc_id, salt) * total
    acc = 0.0
    for version, weight in live:
        acc += weight
        if point < acc:
            return version
    return live[-1][0]
