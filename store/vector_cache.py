"""A cache of vectors that eval and router training embedded outside the pipeline.

Documents the store does not hold in a version (for what-if policies) and labelled queries
are embedded once and kept here, keyed by model version and content hash (documents) or
query text, so running ``tierembed eval`` again costs nothing. One ``.npz`` per version
under the cache folder; delete the folder to drop it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tiering.settings import sanitize_identifier

__all__ = ["VectorCache", "query_key", "doc_key"]


def doc_key(content_hash: str) -> str:
    return "doc:" + content_hash


def query_key(text: str) -> str:
    return "query:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class VectorCache:
    """(version, key) -> vector, persisted per version in ``directory``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._data: dict[str, dict[str, npt.NDArray[np.float32]]] = {}

    def _path(self, version: str) -> Path:
        return self.directory / f"{sanitize_identifier(version)}.npz"

    def _load(self, version: str) -> dict[str, npt.NDArray[np.float32]]:
        if version not in self._data:
            entries: dict[str, npt.NDArray[np.float32]] = {}
            path = self._path(version)
            if path.is_file():
                try:
                    with np.load(path, allow_pickle=False) as data:
                        keys = json.loads(str(data["keys"]))
                        entries = dict(zip(keys, np.asarray(data["vectors"], np.float32), strict=True))
                except (OSError, ValueError, KeyError):
                    entries = {}
            self._data[version] = entries
        return self._data[version]

    def get(self, version: str, key: str) -> npt.NDArray[np.float32] | None:
        return self._load(version).get(key)

    def put(self, version: str, keys: list[str], vectors: npt.NDArray[np.float32]) -> None:
        entries = self._load(version)
        entries.update(zip(keys, np.asarray(vectors, np.float32), strict=True))
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._path(version).with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.asarray(json.dumps(list(entries))), vectors=np.vstack(list(entries.values())))
        tmp.replace(self._path(version))
