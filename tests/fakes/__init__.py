"""Reusable test doubles: real servers and sinks that tests and benchmarks run against."""

from __future__ import annotations

__all__: list[str] = []
