"""Fast unit tests of tiering.features: determinism and the direction of each feature."""

from __future__ import annotations

import json
import math

import pytest

from tiering.documents import Document
from tiering.features import (
    FEATURE_NAMES,
    FEATURES,
    RATE_PSEUDO_WORDS,
    extract_features,
    priority_value,
)

LISTING = (
    "Freehold townhouse, 95 m² over three floors, EPC rating B. Asking €450,000; "
    "estimated rental yield 4.8% and cap rate of 5.2%. Zoning permits mixed use. "
    "Mortgage offers at 60% loan-to-value, spread of 120 bps over the base rate."
)
CHAT = "hey, are you coming to the party tonight? I think it will be a lot of fun for us."
RUSSIAN = "Это небольшой текст на русском языке о погоде и о городе."


def doc(text: str, metadata: dict[str, object] | None = None, doc_id: str = "d1") -> Document:
    return Document(id=doc_id, text=text, source="test", metadata_json=json.dumps(metadata or {}))


def features(text: str, metadata: dict[str, object] | None = None) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, extract_features(doc(text, metadata)), strict=True))


def test_feature_names_are_unique_and_documented() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES) == len(FEATURES)
    assert all(spec.description for spec in FEATURES)


def test_extract_features_same_document_gives_same_tuple() -> None:
    first = extract_features(doc(LISTING))
    assert first == extract_features(doc(LISTING, doc_id="other-id"))
    assert len(first) == len(FEATURE_NAMES)
    assert all(isinstance(v, float) for v in first)


def test_longer_document_has_larger_log_words() -> None:
    assert features(CHAT * 10)["log_words"] > features(CHAT)["log_words"]


def test_listing_is_denser_in_numbers_units_domain_terms_and_rare_words_than_chat() -> None:
    listing, chat = features(LISTING), features(CHAT)
    for name in ("digit_share", "unit_rate", "domain_rate", "rare_word_share"):
        assert listing[name] > chat[name], name
    assert chat["stopword_share"] > listing["stopword_share"]


@pytest.mark.parametrize(
    "text",
    [
        "95 m²",
        "1,200 sq ft",
        "1200 sqft",
        "60 sqm",
        "5.2%",
        "5 percent",
        "€450,000",
        "$3m",
        "£1.2bn",
        "25 bps",
        "2 acres",
        "3.5 EUR",
    ],
)
def test_number_with_unit_counts_once(text: str) -> None:
    f = features(f"{text} plus some words")
    n_words = round(math.expm1(f["log_words"]))
    assert f["unit_rate"] * (n_words + RATE_PSEUDO_WORDS) / 100.0 == pytest.approx(1.0)


def test_bare_numbers_are_not_units() -> None:
    assert features("call 555 1234 about item 42 word")["unit_rate"] == 0.0


def test_domain_phrases_match_across_hyphens_newlines_and_case() -> None:
    # "loan" is a domain word and "loan to value" a phrase: 3 terms in 7 words
    assert features("Loan-to-value and Cap\nRate here")["domain_rate"] == pytest.approx(
        3 * 100.0 / (7 + RATE_PSEUDO_WORDS)
    )


def test_non_latin_text_has_low_ascii_share_and_no_english_stopwords() -> None:
    russian, english = features(RUSSIAN), features(CHAT)
    assert russian["ascii_letter_share"] == 0.0
    assert english["ascii_letter_share"] == 1.0
    assert russian["stopword_share"] == 0.0
    assert russian["rare_word_share"] == 1.0


def test_empty_document_gives_zeros_except_priority() -> None:
    assert extract_features(doc("", {"priority": "high"})) == (
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        1.0,
    )


@pytest.mark.parametrize(
    ("priority", "expected"),
    [
        ("high", 1.0),
        ("HIGH ", 1.0),
        ("low", -1.0),
        ("normal", 0.0),
        (0.5, 0.5),
        (7, 1.0),
        (-3.5, -1.0),
        ("0.25", 0.25),
        (True, 0.0),
        (None, 0.0),
        ("urgent", 0.0),
        ([1], 0.0),
    ],
)
def test_priority_metadata_maps_to_minus_one_to_one(priority: object, expected: float) -> None:
    assert features("text", {"priority": priority})["priority"] == expected


def test_priority_absent_or_metadata_malformed_is_zero() -> None:
    assert priority_value("{}") == 0.0
    assert priority_value('{"other": "priority"}') == 0.0
    assert priority_value("not json priority") == 0.0
    assert priority_value('["priority"]') == 0.0


def test_no_break_spaces_and_symbols_split_words_and_are_not_letters() -> None:
    plain = features("Flat of 95 m2 for 450000 in the centre")
    fancy = features("Flat\u00a0of 95\u00a0m² for €450\u202f000 in the “centre”")
    assert fancy["ascii_letter_share"] == 1.0
    assert fancy["log_words"] == plain["log_words"]
    assert fancy["unit_rate"] > 0


def test_rates_of_a_short_snippet_are_damped() -> None:
    snippet = features("€450,000 and €500,000")
    listing = features(LISTING)
    assert snippet["unit_rate"] < listing["unit_rate"]
