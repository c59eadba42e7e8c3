"""Fast unit tests of tiering.classifier: scoring, explanations, persistence, training."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from tiering.classifier import (
    MIN_TRAINING_EXAMPLES,
    LabeledExample,
    ModelFormatError,
    TrainingDataError,
    ValueClassifier,
    in_holdout,
    load_default,
    train,
)
from tiering.documents import Document
from tiering.features import FEATURE_NAMES

LISTING = (
    "Freehold townhouse, 95 m² over three floors, EPC rating B. Asking €450,000; "
    "estimated rental yield 4.8% and cap rate of 5.2%. Zoning permits mixed use. "
    "Mortgage offers at 60% loan-to-value, spread of 120 bps over the base rate."
)
CHAT = "hey, are you coming to the party tonight? I think it will be fun for all of us."
_WORDS_TEXT = (
    "the house has a garden and the street is quiet with shops near the station "
    "lease yield tenant zoning mortgage rent valuation"
)
_WORDS = _WORDS_TEXT.split()


def doc(text: str, metadata: dict[str, object] | None = None, doc_id: str = "d1") -> Document:
    return Document(id=doc_id, text=text, source="test", metadata_json=json.dumps(metadata or {}))


def synthetic_examples(n: int, seed: int = 0) -> list[LabeledExample]:
    """Short documents are the valuable ones here: the opposite of the default prior."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        n_words = rng.choice([rng.randint(5, 40), rng.randint(200, 600)])
        text = " ".join(rng.choice(_WORDS) for _ in range(n_words))
        examples.append(LabeledExample(doc(text, doc_id=f"doc-{i}"), float(n_words < 100)))
    return examples


# ---------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("text", ["", "x", CHAT, LISTING, LISTING * 500, "1234567890 " * 1000, "€1 " * 300])
@pytest.mark.parametrize("priority", [None, "high", "low", 1e9])
def test_score_is_a_probability(text: str, priority: object) -> None:
    score = load_default().score(doc(text, {"priority": priority}))
    assert 0.0 <= score <= 1.0


def test_score_many_equals_score_in_input_order() -> None:
    model = load_default()
    docs = [doc(t, doc_id=str(i)) for i, t in enumerate([LISTING, CHAT, "", LISTING * 3])]
    assert model.score_many(docs) == [model.score(d) for d in docs]
    assert model.score_many(iter(docs)) == model.score_many(docs)


def test_default_prior_prefers_domain_dense_text_and_high_priority() -> None:
    model = load_default()
    assert model.score(doc(LISTING)) > model.score(doc(CHAT))
    high, plain, low = (model.score(doc(CHAT, {"priority": p})) for p in ("high", None, "low"))
    assert high > plain > low


def test_default_model_says_it_is_a_hand_set_prior() -> None:
    model = load_default()
    assert model.provenance.lower().startswith("hand-set prior, not trained")
    assert "tierembed router train" in model.provenance
    assert model.feature_names == FEATURE_NAMES


def test_explain_contributions_sum_to_logit_and_score() -> None:
    model = load_default()
    explanation = model.explain(doc(LISTING, {"priority": "high"}, doc_id="listing-1"))
    total = explanation.bias + sum(c.contribution for c in explanation.contributions)
    assert total == pytest.approx(explanation.logit)
    assert explanation.score == pytest.approx(1.0 / (1.0 + math.exp(-explanation.logit)))
    assert explanation.score == model.score(doc(LISTING, {"priority": "high"}))
    magnitudes = [abs(c.contribution) for c in explanation.contributions]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert {c.name for c in explanation.contributions} == set(FEATURE_NAMES)
    for c in explanation.contributions:
        assert c.contribution == pytest.approx(c.weight * c.standardized)


def test_explain_render_names_document_score_and_every_feature() -> None:
    text = load_default().explain(doc(LISTING, doc_id="listing-1")).render()
    assert "listing-1" in text and "router-default-v1" in text and "bias" in text
    assert all(name in text for name in FEATURE_NAMES)


# ------------------------------------------------------------------------ persistence


def test_json_round_trip_gives_an_equal_model(tmp_path: Path) -> None:
    model = dataclasses.replace(load_default(), version="v-test", bias=0.123456789012345)
    assert ValueClassifier.from_json(model.to_json()) == model
    path = tmp_path / "model.json"
    model.save(path)
    assert ValueClassifier.load(path) == model


def test_shipped_default_file_is_in_canonical_form() -> None:
    shipped = resources.files("tiering.models").joinpath("router-default.json")
    assert shipped.read_text(encoding="utf-8") == load_default().to_json()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p.update(format="something-else"), "format"),
        (lambda p: p.pop("features"), "features"),
        (lambda p: p["features"].pop(), "feature set"),
        (lambda p: p["features"][0].update(name="renamed"), "retrain"),
        (lambda p: p["features"][0].update(scale=0.0), "positive"),
        (lambda p: p.update(bias="high"), "bias"),
    ],
)
def test_malformed_model_json_raises_model_format_error(mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    payload = json.loads(load_default().to_json())
    mutate(payload)
    with pytest.raises(ModelFormatError, match=expected) as info:
        ValueClassifier.from_json(json.dumps(payload), source="bad.json")
    assert isinstance(info.value, ValueError)
    assert "bad.json" in str(info.value)


def test_invalid_json_text_raises_model_format_error() -> None:
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        ValueClassifier.from_json("{", source="bad.json")


# --------------------------------------------------------------------------- training


def test_training_on_labels_the_prior_gets_wrong_beats_the_default_on_holdout() -> None:
    examples = synthetic_examples(400)
    result = train(examples, seed=0)
    assert result.train_size + result.holdout_size == len(examples)
    assert 60 <= result.holdout_size <= 140  # about a quarter
    assert result.holdout_accuracy is not None and result.holdout_accuracy >= 0.95
    assert result.holdout_auc is not None and result.holdout_auc >= 0.95
    assert result.baseline_holdout_accuracy is not None
    assert result.holdout_accuracy > result.baseline_holdout_accuracy + 0.3
    weights = dict(zip(FEATURE_NAMES, result.model.weights, strict=True))
    assert weights["log_words"] < 0  # learned: shorter is worth more here
    assert "trained by tiering.classifier.train" in result.model.provenance
    assert "holdout accuracy" in result.render()


def test_training_is_deterministic_and_split_ignores_example_order() -> None:
    examples = synthetic_examples(200)
    first, again = train(examples), train(examples)
    assert first.model == again.model
    assert first.model.version.startswith("router-trained-")
    shuffled = train(list(reversed(examples)))
    assert shuffled.holdout_size == first.holdout_size
    assert shuffled.model.weights == pytest.approx(first.model.weights, abs=1e-6)
    assert train(examples, seed=1).model != first.model  # another seed, another split


def test_graded_targets_train_with_cross_entropy() -> None:
    examples = [LabeledExample(e.document, 0.9 if e.target else 0.2) for e in synthetic_examples(200)]
    result = train(examples)
    assert result.holdout_auc is not None and result.holdout_auc >= 0.95


def test_feature_constant_in_training_keeps_the_prior_weight() -> None:
    result = train(synthetic_examples(200))
    idx = FEATURE_NAMES.index("priority")
    assert result.model.weights[idx] == load_default().weights[idx]
    assert "priority" in result.model.provenance
    chat = doc(CHAT)
    assert result.model.score(doc(CHAT, {"priority": "high"})) > result.model.score(chat)


def test_trained_model_round_trips_through_json() -> None:
    model = train(synthetic_examples(100)).model
    assert ValueClassifier.from_json(model.to_json()) == model


def test_no_holdout_reports_no_holdout_metrics() -> None:
    result = train(synthetic_examples(100), holdout_fraction=0.0)
    assert result.holdout_size == 0 and result.train_size == 100
    assert result.holdout_accuracy is None and result.holdout_auc is None


def test_too_few_examples_raises_training_data_error() -> None:
    with pytest.raises(TrainingDataError, match=f"at least {MIN_TRAINING_EXAMPLES}") as info:
        train(synthetic_examples(MIN_TRAINING_EXAMPLES - 1))
    assert isinstance(info.value, ValueError)


def test_single_class_raises_training_data_error() -> None:
    examples = [LabeledExample(e.document, 1.0) for e in synthetic_examples(50)]
    with pytest.raises(TrainingDataError, match="both"):
        train(examples)


@pytest.mark.parametrize("target", [1.5, -0.1, math.nan])
def test_target_outside_unit_interval_raises_naming_the_document(target: float) -> None:
    examples = synthetic_examples(50)
    examples[7] = LabeledExample(examples[7].document, target)
    with pytest.raises(TrainingDataError, match=r"outside \[0, 1\]") as info:
        train(examples)
    assert info.value.doc_ids == ("doc-7",)


def test_duplicate_ids_raise_naming_them() -> None:
    examples = synthetic_examples(50)
    examples += [examples[3], LabeledExample(examples[9].document, 0.0)]
    with pytest.raises(TrainingDataError, match="doc-3, doc-9") as info:
        train(examples)
    assert info.value.doc_ids == ("doc-3", "doc-9")


def test_training_split_with_one_class_raises_training_data_error() -> None:
    examples = [LabeledExample(e.document, 0.0) for e in synthetic_examples(60)]
    held = next(i for i in range(60) if in_holdout(f"doc-{i}", holdout_fraction=0.25))
    examples[held] = LabeledExample(examples[held].document, 1.0)  # the only positive
    with pytest.raises(TrainingDataError, match="training split"):
        train(examples)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"holdout_fraction": 1.0},
        {"holdout_fraction": -0.1},
        {"l2": -1.0},
        {"epochs": 0},
    ],
)
def test_bad_training_arguments_raise_value_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        train(synthetic_examples(50), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- dependencies


def test_importing_classifier_and_features_pulls_in_no_heavy_dependency() -> None:
    banned = ("apache_beam", "prefect", "openai", "weaviate", "torch", "sklearn")
    code = (
        "import sys, tiering.classifier, tiering.features; "
        "tiering.classifier.load_default().score_many([]); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({banned!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "[]", out.stdout
