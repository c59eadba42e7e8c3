"""ScoreDocuments: the cheap classifier gives each document a value score in [0, 1].

The classifier (a small logistic model over fast text features, see ``tiering.classifier``)
is loaded once per DoFn instance in ``setup``; scoring costs microseconds per document.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from tiering.chunking import estimate_tokens
from tiering.classifier import ValueClassifier, load_default
from tiering.documents import Document, ScoredDocument

__all__ = ["ScoreDocuments", "load_classifier"]


def load_classifier(path: str | None) -> ValueClassifier:
    return ValueClassifier.load(path) if path else load_default()


@beam.typehints.with_input_types(Document)
@beam.typehints.with_output_types(ScoredDocument)
class _ScoreFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, classifier_path: str | None) -> None:
        self._path = classifier_path
        self._clf: ValueClassifier | None = None

    def setup(self) -> None:
        self._clf = load_classifier(self._path)

    def process(self, doc: Document) -> Iterator[ScoredDocument]:
        assert self._clf is not None
        yield ScoredDocument(doc, float(self._clf.score(doc)), estimate_tokens(doc.text))


class ScoreDocuments(beam.PTransform):  # type: ignore[misc]
    def __init__(self, classifier_path: str | None = None) -> None:
        super().__init__()
        self.classifier_path = classifier_path

    def expand(self, docs: beam.PCollection[Document]) -> beam.PCollection[ScoredDocument]:
        return docs | "Score" >> beam.ParDo(_ScoreFn(self.classifier_path))
