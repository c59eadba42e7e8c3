"""Price table, exact cost arithmetic and the runtime spend guard of the API tier.

Source of the table: OpenAI pricing page (https://openai.com/api/pricing/) as recorded in
this project's DESIGN.md, read on 2026-11-25: text-embedding-3-small $0.02,
text-embedding-3-large $0.13, text-embedding-ada-002 $0.10 per 1M input tokens; the Batch
API costs half. Prices change: override per model with
``api.models[].price_per_million_tokens``.

Money is exact here: prices are decimal strings turned into :class:`~fractions.Fraction`,
billed tokens come from each reply's ``usage`` and are apportioned to inputs as whole
tokens that sum to the bill (:func:`apportion`), and floats appear only at the edge.
Estimated figures (from the token estimate) and billed figures (from ``usage``) are kept in
separate fields and counters and never mixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "Price",
    "PRICE_TABLE",
    "PRICE_SOURCE",
    "PRICE_READ_ON",
    "price_for",
    "cost_usd",
    "exact_cost_usd",
    "apportion",
    "SpendGuard",
]

PRICE_SOURCE = "https://openai.com/api/pricing/ (read 2026-11-25, via DESIGN.md)"
PRICE_READ_ON = "2026-11-25"


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M input tokens, kept as a string-exact decimal to avoid float drift."""

    model: str
    usd_per_million: str
    source: str = PRICE_SOURCE

    @property
    def per_token(self) -> Fraction:
        return Fraction(self.usd_per_million) / 1_000_000


PRICE_TABLE: dict[str, Price] = {
    p.model: p
    for p in (
        Price("text-embedding-3-small", "0.02"),
        Price("text-embedding-3-large", "0.13"),
        Price("text-embedding-ada-002", "0.10"),
    )
}


def price_for(model: str, override_usd_per_million: float | None = None) -> Price:
    """The price of ``model``; an explicit override wins. Unknown models raise KeyError."""
    if override_usd_per_million is not None:
        return Price(model, repr(override_usd_per_million), source="config override")
    try:
        return PRICE_TABLE[model]
    except KeyError:
        known = ", ".join(sorted(PRICE_TABLE))
        raise KeyError(
            f"no price for model {model!r} (known: {known}); set "
            "api.models[].price_per_million_tokens in the config"
        ) from None


def exact_cost_usd(tokens: int, price: Price) -> Fraction:
    """The exact cost of ``tokens`` at ``price``."""
    return tokens * price.per_token


def cost_usd(tokens: int, price: Price) -> float:
    """Exact cost of ``tokens`` at ``price``, rounded to a float only at the end."""
    return float(exact_cost_usd(tokens, price))


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` whole tokens over ``weights`` in proportion, summing exactly to it.

    Largest-remainder (Hamilton) method; ties go to the earlier index. All-zero weights
    split evenly. Used to attribute one reply's billed tokens to the inputs it carried.
    """
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError(f"total and weights must be non-negative: {total}, {list(weights)}")
    if not weights:
        if total:
            raise ValueError(f"cannot apportion {total} tokens over no inputs")
        return []
    basis = list(weights) if sum(weights) > 0 else [1] * len(weights)
    whole = sum(basis)
    shares = [total * w // whole for w in basis]
    order = sorted(range(len(basis)), key=lambda i: (-((total * basis[i]) % whole), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


class SpendGuard:
    """This worker's share of the run budget, checked before each paid request.

    A request may go out only if what was billed so far, plus an **upper bound** of the
    cost of every request in flight, plus an upper bound of its own cost stays within the
    cap; on the reply the bound is replaced by the billed figure (:meth:`settle`), and a
    request that fails unbilled gives it back (:meth:`release`). The bound is
    :func:`tiering.chunking.token_upper_bound` (a text can never need more tokens than its UTF-8
    bytes, plus the special tokens some models add), not the estimate: a provider that
    counts more than our estimate (real tokenizers split codes and identifiers into many
    pieces) cannot push billed spend past the cap, not even with the first request, before
    any reply has said how it counts. The bound is several times the real cost, so near the
    cap the caller waits for replies in flight (their bounds turn into smaller bills) and
    sends smaller requests rather than giving up early (see ``ApiEmbedder``). No cap
    admits everything.
    """

    def __init__(self, cap_usd: float | None, price: Price | None) -> None:
        if cap_usd is not None and price is None:
            raise ValueError("a spend cap needs the model's price to bound request costs")
        self._cap = None if cap_usd is None else Fraction(repr(float(cap_usd)))
        self._per_token = price.per_token if price is not None else Fraction(0)
        self._billed_tokens = 0
        self._reserved_tokens = 0

    @property
    def capped(self) -> bool:
        return self._cap is not None

    @property
    def billed_usd(self) -> Fraction:
        return self._billed_tokens * self._per_token

    @property
    def reserved_usd(self) -> Fraction:
        return self._reserved_tokens * self._per_token

    @property
    def in_flight(self) -> bool:
        """Whether requests are holding reservations (their replies may free room)."""
        return self._reserved_tokens > 0

    def fits(self, max_tokens: int) -> bool:
        """Whether a request of at most ``max_tokens`` fits beside what is billed and held."""
        if self._cap is None:
            return True
        committed = self._billed_tokens + self._reserved_tokens + max_tokens
        return committed * self._per_token <= self._cap

    def could_ever_fit(self, max_tokens: int) -> bool:
        """Whether it would fit once every request in flight were settled at no cost."""
        if self._cap is None:
            return True
        return (self._billed_tokens + max_tokens) * self._per_token <= self._cap

    def try_reserve(self, max_tokens: int) -> bool:
        """Reserve ``max_tokens`` (an upper bound of the request) if it fits; False leaves
        no trace."""
        if not self.fits(max_tokens):
            return False
        self._reserved_tokens += max_tokens
        return True

    def settle(self, max_tokens: int, billed_tokens: int) -> None:
        """Turn a reservation into the provider's bill for that request."""
        self.release(max_tokens)
        self._billed_tokens += billed_tokens

    def release(self, max_tokens: int) -> None:
        """Give back a reservation whose request will not be billed."""
        if max_tokens > self._reserved_tokens:
            raise ValueError(f"releasing {max_tokens} tokens, only {self._reserved_tokens} reserved")
        self._reserved_tokens -= max_tokens
