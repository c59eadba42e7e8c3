"""Price table for embedding models, in USD per 1M input tokens.

Source: OpenAI pricing page (https://openai.com/api/pricing/) as recorded in this project's
DESIGN.md on 2026-11-25: text-embedding-3-small $0.02, text-embedding-3-large $0.13,
text-embedding-ada-002 $0.10 per 1M tokens; the Batch API costs half. Prices change:
override per model with ``api.models[].price_per_million_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

__all__ = ["Price", "PRICE_TABLE", "PRICE_SOURCE", "price_for", "cost_usd"]

PRICE_SOURCE = "https://openai.com/api/pricing/ (read 2026-11-25, via DESIGN.md)"


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


def cost_usd(tokens: int, price: Price) -> float:
    """Exact cost of ``tokens`` at ``price``, rounded to a float only at the end."""
    return float(tokens * price.per_token)
