"""Rank normalisation of value scores within a run.

The shipped classifier is a hand-set prior: on a corpus of short entries it scores every
document near the same value (measured: at most 0.534 on 6,000 39-word entries, so 2 of
them reached a 0.5 threshold and a budget bought nothing). A document's normalised score
is its rank share within the run instead: the fraction of the run's documents scoring
below it (ties share their mid-rank), so scores spread over [0, 1] on any corpus and a
threshold of 0.7 means "the run's top 30%".

Across Beam workers the run's score distribution travels as a few hundred quantiles (a
side input, ``beam_pipeline/normalize.py``); :func:`normalize_with_quantiles` maps a score
through them, and :func:`rank_normalize` is the exact version for a list in memory. Pure.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

__all__ = ["rank_normalize", "normalize_with_quantiles", "uses_rank_normalization"]


def uses_rank_normalization(setting: str, classifier_path: str | None) -> bool:
    """'auto' normalises the shipped classifier's scores, not a trained model's."""
    if setting == "auto":
        return classifier_path is None
    return setting == "rank"


def rank_normalize(scores: Sequence[float]) -> list[float]:
    """Each score's mid-rank share in ``scores``: ``(below + (equal - 1) / 2 + 0.5) / n``,
    in (0, 1); a constant list gives 0.5 everywhere."""
    n = len(scores)
    if n == 0:
        return []
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    values = np.asarray(scores, dtype=np.float64)
    below = np.searchsorted(ordered, values, side="left")
    equal = np.searchsorted(ordered, values, side="right") - below
    return [float(x) for x in (below + (equal - 1) / 2.0 + 0.5) / n]


def normalize_with_quantiles(score: float, quantiles: Sequence[float]) -> float:
    """A score's rank share estimated from the run's quantiles (``quantiles[0]`` the min,
    ``quantiles[-1]`` the max, evenly spaced in rank), interpolated between neighbours."""
    m = len(quantiles)
    if m < 2 or quantiles[0] >= quantiles[-1]:
        return 0.5
    lo = bisect.bisect_left(quantiles, score)
    hi = bisect.bisect_right(quantiles, score)
    if hi == 0:
        return 0.0
    if lo >= m:
        return 1.0
    if lo < hi:  # equal to one or more quantile points: their middle
        return ((lo + hi - 1) / 2.0) / (m - 1)
    left, right = quantiles[lo - 1], quantiles[lo]
    frac = (score - left) / (right - left) if right > left else 0.5
    return (lo - 1 + frac) / (m - 1)
