"""Packing embedding inputs into provider requests by count and by tokens.

Inputs keep their order; a request closes when adding the next input would pass either the
provider's inputs-per-request or tokens-per-request limit. An input over the per-input
limit is a programming error here: chunking upstream guarantees it never happens, and the
packer refuses rather than send it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RequestLimits", "pack_requests"]


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_inputs: int
    max_tokens: int
    max_tokens_per_input: int


def pack_requests(token_counts: Sequence[int], limits: RequestLimits) -> list[list[int]]:
    """Group input indices into requests that respect ``limits``."""
    requests: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, tokens in enumerate(token_counts):
        if tokens > limits.max_tokens_per_input or tokens > limits.max_tokens:
            raise ValueError(
                f"input {index} has ~{tokens} tokens, over the per-input limit "
                f"{min(limits.max_tokens_per_input, limits.max_tokens)}; chunk it first"
            )
        if current and (len(current) >= limits.max_inputs or used + tokens > limits.max_tokens):
            requests.append(current)
            current, used = [], 0
        current.append(index)
        used += tokens
    if current:
        requests.append(current)
    return requests
