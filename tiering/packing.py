"""Packing embedding inputs into provider requests by count and by tokens.

The API tier fills each request up to the provider's limits (OpenAI: 2,048 inputs and
300,000 tokens per request, 8,192 tokens per input; configurable per model) using the
conservative token estimate from :mod:`tiering.chunking`. Inputs keep their order; a
request closes when the next input would pass the inputs-per-request or tokens-per-request
limit. An input over the per-input limit is never sent: chunking upstream should have split
it, so the packer reports it in :attr:`Packing.oversized` and the caller dead-letters it.

:func:`pack_grouped` keeps the inputs of one group (the chunks of one document) in the same
request whenever the group fits in one, so a document is not split over requests that can
fail or be refused apart (its first chunks paid for, then thrown away).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RequestLimits", "Packing", "pack_requests", "pack_grouped"]


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """A provider's per-request limits for one model (estimated tokens)."""

    max_inputs: int
    max_tokens: int
    max_tokens_per_input: int

    def __post_init__(self) -> None:
        if min(self.max_inputs, self.max_tokens, self.max_tokens_per_input) < 1:
            raise ValueError(f"request limits must all be >= 1: {self!r}")

    def capped(self, max_tokens: int) -> RequestLimits:
        """These limits with tokens per request (and so per input) at most ``max_tokens``."""
        tokens = max(1, min(self.max_tokens, max_tokens))
        return RequestLimits(self.max_inputs, tokens, min(self.max_tokens_per_input, tokens))


@dataclass(frozen=True, slots=True)
class Packing:
    """Input indices grouped into requests, and the inputs too large to send at all."""

    requests: tuple[tuple[int, ...], ...]
    oversized: tuple[int, ...]


def pack_requests(token_counts: Sequence[int], limits: RequestLimits) -> Packing:
    """Group input indices into requests that respect ``limits``, in order."""
    requests: list[tuple[int, ...]] = []
    oversized: list[int] = []
    current: list[int] = []
    used = 0
    for index, tokens in enumerate(token_counts):
        if tokens > limits.max_tokens_per_input:
            oversized.append(index)
            continue
        if current and (len(current) >= limits.max_inputs or used + tokens > limits.max_tokens):
            requests.append(tuple(current))
            current, used = [], 0
        current.append(index)
        used += tokens
    if current:
        requests.append(tuple(current))
    return Packing(tuple(requests), tuple(oversized))


def pack_grouped(
    token_counts: Sequence[int], groups: Sequence[int], limits: RequestLimits
) -> Packing:
    """Like :func:`pack_requests`, but a group of inputs (equal ``groups`` values, adjacent
    or not) goes into one request when it fits in one: a request closes early rather than
    split a group. A group too large for any request is packed in order from a fresh
    request, its last request left open to the next group. Groups keep first-seen order."""
    if len(groups) != len(token_counts):
        raise ValueError(f"{len(groups)} group ids for {len(token_counts)} inputs")
    members: dict[int, list[int]] = {}
    oversized: list[int] = []
    for index, (tokens, group) in enumerate(zip(token_counts, groups, strict=True)):
        if tokens > limits.max_tokens_per_input:
            oversized.append(index)
        else:
            members.setdefault(group, []).append(index)
    packer = _GroupPacker(token_counts, limits)
    for idxs in members.values():
        packer.add_group(idxs)
    return Packing(packer.finish(), tuple(oversized))


class _GroupPacker:
    def __init__(self, token_counts: Sequence[int], limits: RequestLimits) -> None:
        self._tokens = token_counts
        self._limits = limits
        self._requests: list[tuple[int, ...]] = []
        self._current: list[int] = []
        self._used = 0

    def _fits(self, n: int, tokens: int) -> bool:
        return (len(self._current) + n <= self._limits.max_inputs
                and self._used + tokens <= self._limits.max_tokens)

    def _close(self) -> None:
        if self._current:
            self._requests.append(tuple(self._current))
            self._current, self._used = [], 0

    def add_group(self, idxs: Sequence[int]) -> None:
        tokens = sum(self._tokens[i] for i in idxs)
        if not self._fits(len(idxs), tokens):
            self._close()  # start the group on a fresh request
        for i in idxs:
            if not self._fits(1, self._tokens[i]):
                self._close()
            self._current.append(i)
            self._used += self._tokens[i]

    def finish(self) -> tuple[tuple[int, ...], ...]:
        self._close()
        return tuple(self._requests)
