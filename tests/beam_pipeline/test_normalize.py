"""NormalizeScores: the run's raw scores become rank shares through a quantiles side input."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from beam_pipeline.normalize import NormalizeScores
from tiering.documents import Document, ScoredDocument
from tiering.normalization import rank_normalize


def test_scores_spread_over_the_unit_interval_in_rank_order_and_keep_the_raw_score() -> None:
    raw = [0.03 + 0.004 * ((i * 37) % 100) for i in range(100)]  # all low, like short entries
    docs = [ScoredDocument(Document(f"d{i:03d}", "t", "s"), s, 5) for i, s in enumerate(raw)]
    exact = dict(zip((d.document.id for d in docs), rank_normalize(raw), strict=True))

    def check(out: list[ScoredDocument]) -> None:
        assert len(out) == 100
        assert all(d.raw_score == raw[int(d.document.id[1:])] for d in out)
        assert min(d.score for d in out) < 0.02 and max(d.score for d in out) > 0.98
        assert all(abs(d.score - exact[d.document.id]) <= 0.011 for d in out)
        by_raw = sorted(out, key=lambda d: d.raw_score or 0.0)
        assert [d.score for d in by_raw] == sorted(d.score for d in by_raw)

    with TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        out = p | beam.Create(docs) | NormalizeScores()
        assert_that(out, check)
