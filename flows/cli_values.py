"""Checks of command-line numbers that click's ranges let through: NaN passes every
``min``/``max`` (comparisons with NaN are false) and infinity passes ``min``."""

from __future__ import annotations

import math
from typing import Optional

import typer

__all__ = ["finite", "finite_usd"]


def finite(value: Optional[float]) -> Optional[float]:
    """A finite number (None passes: the option was not given)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number; got {value}")
    return value


def finite_usd(value: Optional[float]) -> Optional[float]:
    """An amount of US dollars: finite and not negative (None passes)."""
    if value is not None and (not math.isfinite(value) or value < 0):
        raise typer.BadParameter(f"must be a finite amount of US dollars, 0 or more; got {value}")
    return value
