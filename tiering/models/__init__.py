"""Shipped classifier files, read with ``importlib.resources`` (see ``load_default``).

``router-default.json`` is a hand-set prior, not a trained model; its ``provenance``
field says how its weights were chosen.
"""

from __future__ import annotations

__all__: list[str] = []
