"""Length-bucketed batches for the local model: similar lengths together, bounded memory.

A transformer batch is padded to its longest input, so a batch that mixes a 20-token chunk
with a 250-token one spends most of its work on padding. ``sentence-transformers`` avoids
that inside one ``encode`` call by sorting its inputs by length; a pipeline sees its
documents a few at a time, so the local tier keeps one open batch per length bucket
(``width`` real tokens wide) and sends a bucket to the model as soon as it holds
``batch_size`` inputs. Each batch then holds inputs within ``width`` tokens of each other,
and the model sees a bounded set of shapes (kernel and allocator caches stay small).

Memory is bounded whatever the corpus size: at most ``batch_size - 1`` inputs wait in each
of the ``ceil(max_tokens / width)`` buckets. :meth:`LengthBuckets.drain` empties them at
the end of a bundle, shortest first, in full batches across bucket edges.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["LengthBuckets", "bucket_width"]

T = TypeVar("T", bound=Hashable)


def bucket_width(max_tokens: int, buckets: int = 16, minimum: int = 16) -> int:
    """A width that splits ``[1, max_tokens]`` into at most ``buckets`` buckets."""
    if max_tokens < 1 or buckets < 1 or minimum < 1:
        raise ValueError(f"need max_tokens, buckets, minimum >= 1 (got {max_tokens}, {buckets}, {minimum})")
    return max(minimum, -(-max_tokens // buckets))


@dataclass
class LengthBuckets(Generic[T]):
    """Open batches by length. ``add`` returns a full batch when one fills, else None."""

    batch_size: int
    width: int
    _open: dict[int, list[T]] = field(default_factory=dict)
    _lengths: dict[T, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.width < 1:
            raise ValueError(f"batch_size and width must be >= 1 (got {self.batch_size}, {self.width})")

    def add(self, item: T, n_tokens: int) -> list[T] | None:
        """Put ``item`` (``n_tokens`` long) in its bucket; the bucket's batch if now full."""
        key = max(0, n_tokens - 1) // self.width
        bucket = self._open.setdefault(key, [])
        bucket.append(item)
        self._lengths[item] = n_tokens
        if len(bucket) < self.batch_size:
            return None
        del self._open[key]
        for done in bucket:
            del self._lengths[done]
        return bucket

    def __len__(self) -> int:
        return len(self._lengths)

    def drain(self) -> Iterator[list[T]]:
        """Everything still waiting, shortest first, in batches of at most ``batch_size``."""
        waiting = sorted(self._lengths, key=self._lengths.__getitem__)
        self._open.clear()
        self._lengths.clear()
        for start in range(0, len(waiting), self.batch_size):
            yield waiting[start : start + self.batch_size]
