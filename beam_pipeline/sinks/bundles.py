"""Emitting from ``finish_bundle``: the buffered sink writers flush there, and Beam wants
each output wrapped in a window (the pipeline is batch, so the global window)."""

from __future__ import annotations

from apache_beam import pvalue
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

__all__ = ["in_global_window"]


def in_global_window(item: object) -> object:
    """``item`` (or a TaggedOutput's value) as a WindowedValue in the global window."""
    window = GlobalWindow()
    if isinstance(item, pvalue.TaggedOutput):
        return pvalue.TaggedOutput(item.tag, WindowedValue(item.value, window.max_timestamp(), (window,)))
    return WindowedValue(item, window.max_timestamp(), (window,))
