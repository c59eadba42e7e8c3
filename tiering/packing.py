"""Packing embedding inputs into provider requests by count and by tokens.

The API tier fills each request up to the provider's limits (OpenAI: 2,048 inputs and
300,000 tokens per request, 8,192 tokens per input; configurable per model) using the
conservative token estimate from :mod:`tiering.chunking`. Inputs keep their order; a
request closes when the next input would pass the inputs-per-request or tokens-per-request
limit. An input over the per-input limit is never sent: chunking upstream should have split
it, so the packer reports it in :attr:`Packing.oversized` and the caller dead-letters it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RequestLimits", "Packing", "pack_requests"]


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
