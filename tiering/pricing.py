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

    A request may go out only if what was billed so far, plus the estimated cost of the
    requests already in flight, plus its own estimated cost stays within the cap. On the
    reply the estimate is replaced by the billed figure (:meth:`settle`); a request that
    fails unbilled gives its reservation back (:meth:`release`). No cap admits everything.

    Estimates are scaled by the worst billed/estimated ratio seen so far (never below 1), so
    a tokenizer that counts more than our estimate (multilingual models do: up to 1.3x) is
    learned from the first reply on; only requests in flight before that reply rely on the
    raw estimate.
    """

    def __init__(self, cap_usd: float | None, price: Price | None) -> None:
        if cap_usd is not None and price is None:
            raise ValueError("a spend cap needs the model's price to estimate request costs")
        self._cap = None if cap_usd is None else Fraction(repr(float(cap_usd)))
        self._per_token = price.per_token if price is not None else Fraction(0)
        self._billed_tokens = 0
        self._reserved_tokens = 0
        self._ratio = Fraction(1)

    @property
    def billed_usd(self) -> Fraction:
        return self._billed_tokens * self._per_token

    @property
    def reserved_usd(self) -> Fraction:
        return self._reserved_tokens * self._per_token

    def try_reserve(self, est_tokens: int) -> bool:
        """Reserve ``est_tokens`` if their estimated cost still fits; False leaves no trace."""
        if self._cap is not None:
            committed = self._billed_tokens + (self._reserved_tokens + est_tokens) * self._ratio
            if committed * self._per_token > self._cap:
                return False
        self._reserved_tokens += est_tokens
        return True

    def settle(self, est_tokens: int, billed_tokens: int) -> None:
        """Turn a reservation into the provider's bill for that request."""
        self.release(est_tokens)
        self._billed_tokens += billed_tokens
        if est_tokens > 0:
            self._ratio = max(self._ratio, Fraction(billed_tokens, est_tokens))

    def release(self, est_tokens: int) -> None:
        """Give back a reservation whose request will not be billed."""
        if est_tokens > self._reserved_tokens:
            raise ValueError(f"releasing {est_tokens} tokens, only {self._reserved_tokens} reserved")
        self._reserved_tokens -= est_tokens
