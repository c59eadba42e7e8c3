"""Calibration reference samples: per model version, the vectors of a fixed sample of the
corpus, kept next to the store so search does not rebuild them for every query.

Calibrated fusion (:mod:`tiering.fusion`) turns a version's scores into z-scores against
the query's scores on a sample of the *whole corpus* embedded by that version. The sample
is the same set of documents for every version (the lowest stable hashes of the ids in
the store), so each version is judged against the same documents. Documents a version
already holds come from the store for free; the others are embedded once by that version
(for an API version: paid, and recorded in the spend ledger) and kept here.

One ``.npz`` file per (store table prefix, version) under ``search.calibration_dir``:
document ids, content hashes, vectors, and the store's row counts when it was built (a
cheap staleness check: the sample is rebuilt when the store's counts change, reusing every
vector whose document and text are unchanged).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tiering.settings import sanitize_identifier

__all__ = ["ReferenceSample", "reference_path", "load_reference", "save_reference"]


@dataclass(frozen=True)
class ReferenceSample:
    version: str
    ids: tuple[str, ...]
    hashes: tuple[str, ...]
    vectors: npt.NDArray[np.float32]
    counts: dict[str, int]
    """model version -> rows in the store when the sample was drawn"""

    def by_key(self) -> dict[tuple[str, str], npt.NDArray[np.float32]]:
        """(document id, content hash) -> vector, for reuse when the sample is redrawn."""
        return {(i, h): self.vectors[n] for n, (i, h) in enumerate(zip(self.ids, self.hashes, strict=True))}


def reference_path(directory: str | Path, table_prefix: str, version: str) -> Path:
    return Path(directory) / f"{table_prefix}__{sanitize_identifier(version)}.npz"


def load_reference(path: Path, version: str) -> ReferenceSample | None:
    """The saved sample, or None when there is none (or it cannot be read: it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return ReferenceSample(version, tuple(meta["ids"]), tuple(meta["hashes"]),
                                   np.asarray(data["vectors"], dtype=np.float32),
                                   {str(k): int(v) for k, v in meta["counts"].items()})
    except (OSError, ValueError, KeyError):
        return None


def save_reference(path: Path, sample: ReferenceSample) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"version": sample.version, "ids": list(sample.ids), "hashes": list(sample.hashes),
                       "counts": sample.counts})
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, vectors=sample.vectors, meta=np.asarray(meta))
    tmp.replace(path)
