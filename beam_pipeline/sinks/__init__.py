"""Sinks: where document vectors go. One backend per module, one config per backend.

``WriteEmbeddings(config)`` takes any ``<Backend>SinkConfig`` that has a
``create_write_transform()``; its outputs are ``written`` (document ids) and
``dead_letters`` (per-object failures, with the reason).
"""

from __future__ import annotations

from typing import Protocol

import apache_beam as beam

from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig
from beam_pipeline.sinks.weaviate_sink import WeaviateSinkConfig
from beam_pipeline.tagged import TaggedOutputsTransform
from tiering.documents import EmbeddedDocument

__all__ = ["SinkConfig", "WriteEmbeddings", "LanceDBSinkConfig", "WeaviateSinkConfig"]


class SinkConfig(Protocol):
    def create_write_transform(self) -> beam.PTransform: ...


class WriteEmbeddings(TaggedOutputsTransform):
    def __init__(self, config: SinkConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, docs: beam.PCollection[EmbeddedDocument]) -> dict[str, beam.PCollection]:
        return docs | "Write" >> self.config.create_write_transform()  # type: ignore[no-any-return]
