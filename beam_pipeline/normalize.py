"""NormalizeScores: value scores become rank shares within the run (a global pass).

The run's raw scores are summarised by Beam's ``ApproximateQuantiles`` (exact for runs
smaller than its buffer, a few hundred quantiles otherwise) into a singleton side input;
each document's score is then mapped through them by the pure
:func:`tiering.normalization.normalize_with_quantiles`, and the raw score is kept in
``ScoredDocument.raw_score``. Placed between ScoreDocuments and PlanBudget when
``routing.score_normalization`` resolves to ``rank`` (the shipped classifier by default).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import apache_beam as beam
from apache_beam.transforms.stats import ApproximateQuantiles

from tiering.documents import ScoredDocument
from tiering.normalization import normalize_with_quantiles

__all__ = ["NormalizeScores", "QUANTILES"]

QUANTILES = 1001


@beam.typehints.with_input_types(ScoredDocument, quantiles=list[float])
@beam.typehints.with_output_types(ScoredDocument)
class _NormalizeFn(beam.DoFn):  # type: ignore[misc]
    def process(self, scored: ScoredDocument, quantiles: Sequence[float]) -> Iterator[ScoredDocument]:
        yield replace(scored, score=normalize_with_quantiles(scored.score, quantiles), raw_score=scored.score)


class NormalizeScores(beam.PTransform):  # type: ignore[misc]
    """Scored documents -> the same documents with rank-normalised scores."""

    def expand(self, scored: beam.PCollection[ScoredDocument]) -> beam.PCollection[ScoredDocument]:
        quantiles = (
            scored
            | "RawScores" >> beam.Map(lambda s: float(s.score)).with_output_types(float)
            | "Quantiles" >> ApproximateQuantiles.Globally(QUANTILES).with_output_types(list[float])
        )
        side = beam.pvalue.AsSingleton(quantiles)
        return scored | "Normalize" >> beam.ParDo(_NormalizeFn(), quantiles=side)
