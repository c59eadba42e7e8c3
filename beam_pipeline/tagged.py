"""Composite transforms with several tagged outputs.

Beam reads a composite's ``expand`` return annotation as its output type hint; for a dict of
PCollections it logs "This output type hint will be ignored" on every build (21 times per
run of this pipeline). Such composites declare their element types on the ParDos inside
(each DoFn of this package carries ``with_input_types`` / ``with_output_types``); the
composite keeps its input hint and declares no output hint of its own.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.typehints.decorators import IOTypeHints

__all__ = ["TaggedOutputsTransform"]


class TaggedOutputsTransform(beam.PTransform):  # type: ignore[misc]
    """A PTransform whose ``expand`` returns ``dict[str, PCollection]``."""

    def default_type_hints(self) -> Any:
        hints = IOTypeHints.from_callable(self.expand)
        if hints is None:
            return None
        return hints._replace(output_types=None).strip_pcoll()
