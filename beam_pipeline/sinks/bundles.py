"""What the buffered sink writers share: the transform around their DoFn, and emitting
from ``finish_bundle`` (they flush there, and Beam wants each output wrapped in a window;
the pipeline is batch, so the global window)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beam_pipeline.tagged import TaggedOutputsTransform

__all__ = ["BufferedUpsert", "in_global_window"]


def in_global_window(item: object) -> object:
    """``item`` (or a TaggedOutput's value) as a WindowedValue in the global window."""
    window = GlobalWindow()
    if isinstance(item, pvalue.TaggedOutput):
        return pvalue.TaggedOutput(item.tag, WindowedValue(item.value, window.max_timestamp(), (window,)))
    return WindowedValue(item, window.max_timestamp(), (window,))


class BufferedUpsert(TaggedOutputsTransform):
    """Runs a sink's writer DoFn; outputs ``written`` (document ids) and ``dead_letters``."""

    def __init__(self, write_fn: beam.DoFn) -> None:
        super().__init__()
        self.write_fn = write_fn

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        out = docs | "Upsert" >> beam.ParDo(self.write_fn).with_outputs("dead_letters", main="written")
        return {"written": out.written, "dead_letters": out.dead_letters}
