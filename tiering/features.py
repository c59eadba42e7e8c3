"""Cheap, deterministic features of a document for the value classifier.

``ScoreDocuments`` calls :func:`extract_features` once per document, so it is written to
be fast: the text is encoded to UTF-8 once, and words, letters and digits come from a few
``bytes.translate``/``split``/``count`` passes that run in C; the only regex finds numbers
with units, and only in text that has digits. The features are crude on purpose. They
only need to rank documents well enough to decide which are worth paying for, and
:mod:`tiering.classifier` learns how much each one matters.

A *word* here is what remains between whitespace once ASCII punctuation and digits are
blanked ("loan-to-value" is three words, "don't" two); words are matched lower-cased.

The feature vector is a plain tuple of floats in the order of :data:`FEATURE_NAMES`;
:data:`FEATURES` documents each one. Changing the order or the meaning of a feature
invalidates saved classifiers, so bump :data:`FEATURE_SET_VERSION` when you do.
"""

from __future__ import annotations

import json
import math
import re
import string
from dataclasses import dataclass
from itertools import repeat

from tiering.documents import Document

__all__ = [
    "COMMON_WORDS",
    "DOMAIN_PHRASES",
    "DOMAIN_TERMS",
    "FEATURES",
    "FEATURE_NAMES",
    "FEATURE_SET_VERSION",
    "RATE_PSEUDO_WORDS",
    "STOPWORDS",
    "FeatureSpec",
    "extract_features",
    "priority_value",
]

FEATURE_SET_VERSION = "features-v1"


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One feature: its name in saved models, and what it measures."""

    name: str
    description: str


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("log_words", "ln(1 + number of words)"),
    FeatureSpec(
        "rare_word_share",
        "share of words not in COMMON_WORDS (technical or specialised vocabulary)",
    ),
    FeatureSpec("digit_share", "decimal digits / characters of the text"),
    FeatureSpec(
        "unit_rate",
        "numbers with a unit or currency (m², sqm, sq ft, %, bps, $, €, £, ...) per 100 "
        "words (see RATE_PSEUDO_WORDS), capped at 50",
    ),
    FeatureSpec(
        "domain_rate",
        "real-estate, finance and regulation terms (DOMAIN_TERMS, DOMAIN_PHRASES) per 100 "
        "words (see RATE_PSEUDO_WORDS), capped at 50",
    ),
    FeatureSpec(
        "ascii_letter_share",
        "ASCII letters / letters, counting any non-ASCII character but common symbols "
        "as a letter (0 without letters); low for non-Latin scripts (crude language "
        "signal)",
    ),
    FeatureSpec(
        "stopword_share",
        "share of words that are English stopwords; low for non-English text and for lists or tables",
    ),
    FeatureSpec(
        "priority",
        "user-set metadata 'priority': 'high' -> 1, 'low' -> -1, a number clipped to "
        "[-1, 1], anything else or absent -> 0",
    ),
)

FEATURE_NAMES: tuple[str, ...] = tuple(spec.name for spec in FEATURES)

# English function words. Most of running English prose is made of these, so their share
# is a cheap "is this English sentences" signal.
_STOPWORDS_TEXT = """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself yourselves
"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORDS_TEXT.split())

# Everyday English vocabulary beyond the stopwords (a few hundred frequent words). Words
# outside this list are "rare": jargon, names, numbers spelled out, other languages.
_EVERYDAY_WORDS = """
    able across actually add ago agree air almost along already also although always
    among another answer anything appear area around ask away back bad become began begin
    behind believe best better big bit body book bring build built buy call came car care
    carry case cause certain change child children city clear close come common company
    complete consider continue country course cut day days dear decide different does done
    door early easy eat end enough even ever every everyone everything example eye face fact
    family far feel felt find fine first follow food form found four free friend full game
    gave general get give given go going gone good got great group grow half hand happen
    hard head hear heard help high hold home hope hour house however idea important include
    inside instead interest keep kind knew know known large last late later lead learn least
    leave left less let life light like line list little live long look lot love low made
    main make man many matter may maybe mean means might mind minute miss money month
    morning move much must name near need never new next nice night nothing number off
    often old one open order others own page part people per perhaps person place plan play
    point possible power present probably problem public put question quite rather read
    ready real really reason right room run said saw say school second see seem seen sense
    set several short show side since small something sometimes soon sort sound start state
    still stop story student study sure system take taken talk tell ten thing things think
    three thus time today together told took top toward tried true try turn two type
    understand upon us use used using usually want water way week well went whole within
    without woman word words work world write year years yes yet young via provide sit
    stand lose pay meet watch create speak allow spend walk win offer remember wait serve
    send expect stay fall reach remain suggest raise pass sell require report pull
    s t d ll m re ve don isn aren wasn weren doesn didn won hasn haven couldn wouldn
"""

COMMON_WORDS: frozenset[str] = STOPWORDS | frozenset(_EVERYDAY_WORDS.split())

# Single-word terms of the seed domain (property listings, market analyses, regulatory
# documents). Matched against lower-cased words, so plurals are listed explicitly.
_DOMAIN_TERMS_TEXT = """
    yield yields zoning zoned mortgage mortgages epc ordinance ordinances lease leases
    leasehold freehold tenant tenants tenancy landlord landlords rent rents rental rentals
    appraisal appraisals valuation valuations amortization amortisation ltv noi escrow
    easement easements covenant covenants compliance regulation regulations regulatory
    statute statutes bylaw bylaws permit permits permitting reit reits equity debt
    occupancy vacancy vacancies irr dscr refinancing refinance collateral lien liens deed
    deeds conveyancing appraiser capex opex depreciation underwriting underwritten
    arrears foreclosure foreclosures subdivision setback setbacks variance planning
    listing listings sqm acre acres hectare hectares floorplan condominium condo hoa
    tax taxes taxation assessment assessed amendment amendments directive
    directives enforcement penalty penalties clause clauses pursuant hereby thereof
    jurisdiction municipality municipal council zones brokerage broker brokers
    inflation bond bonds coupon spread spreads portfolio
    portfolios asset assets liabilities liability leverage leveraged lender lenders
    borrower borrowers loan loans investment investments financing occupier occupiers
    tenure dwelling dwellings permitted statutory liable offence offences subsection
    provisions notwithstanding hereinafter
"""
DOMAIN_TERMS: frozenset[str] = frozenset(_DOMAIN_TERMS_TEXT.split())

# Multi-word terms, counted on the text reduced to single-spaced lower-case words (so
# "loan-to-value" and "Cap\nRate" match). A leading space anchors the phrase at a word
# start; a plural suffix still matches. A phrase counts in addition to any of its words
# that are DOMAIN_TERMS themselves ("loan to value" counts twice): a crude density.
DOMAIN_PHRASES: tuple[str, ...] = (
    " cap rate",
    " interest rate",
    " capitalization rate",
    " capitalisation rate",
    " loan to value",
    " net operating income",
    " basis point",
    " cash flow",
    " property tax",
    " energy performance certificate",
    " internal rate of return",
    " debt service coverage",
    " floor area ratio",
    " building code",
    " rent roll",
    " land use",
    " right of way",
    " stamp duty",
)

# One bytes.translate lower-cases ASCII and blanks ASCII punctuation and digits; then
# bytes.split() gives the words.
_BLANKED = string.punctuation + string.digits
_WORD_TABLE = bytes.maketrans(
    (string.ascii_uppercase + _BLANKED).encode(),
    (string.ascii_lowercase + " " * len(_BLANKED)).encode(),
)
# Common non-ASCII spaces and symbols that are not letters (no-break spaces are frequent
# in scraped listings: "95\u00a0m²"); blanked so that they neither glue words together nor
# count as foreign letters. Any other non-ASCII character counts as a letter.
_SYMBOLS: tuple[bytes, ...] = tuple(c.encode() for c in "\u00a0\u202f\u2009’‘“”„–—…«»€£¥²³°‰•·×§")
_NOT_ASCII_LETTERS = bytes(b for b in range(256) if not 97 <= b <= 122)
_NOT_UTF8_LEADS = bytes(range(0xC0))  # every non-ASCII character has one lead byte >= 0xC0
_DIGIT_BYTES = string.digits.encode()

# Word categories as bit flags, so one dict look-up per word classifies it.
_COMMON, _STOP, _DOMAIN = 1, 2, 4

# A number followed by a unit, or a currency sign followed by a number. The pattern opens
# with one character class (the lookbehinds then tell the two cases apart) because the
# regex engine skips quickly to candidates of a leading class: about 1.4x faster than
# "currency-number | number-unit" as a plain alternation.
_UNIT_RE = re.compile(
    r"""
    [\d$€£¥]
    (?: (?<=[$€£¥]) \s?\d(?:[\d,.]*\d)?
      | (?<=\d) (?:[\d,.]*\d)?\s?
        (?: %|‰|m²|ft²|sq\.?\s?(?:ft|feet|m|metres|meters)\b|sqm\b|sqft\b|m2\b
          | (?:square\s)?(?:metres?|meters?|feet|foot|ft|km|kilometres?)\b
          | bps\b|bp\b|basis\spoints?|per\s?cent|percent
          | (?:eur|usd|gbp|chf)\b|[€£$]
          | (?:k|m|mn|bn|million|billion)\b
          | acres?\b|ha\b|hectares?\b )
    )
    """,
    re.IGNORECASE | re.VERBOSE,
)

_RATE_CAP = 50.0
# Rates are per 100 of (words + RATE_PSEUDO_WORDS): without the pseudo-words a ten-word
# snippet with two prices would look denser than any real listing. The effect fades for
# documents of a few hundred words.
RATE_PSEUDO_WORDS = 20

_CATEGORY: dict[bytes, int] = {
    word.encode(): (
        _COMMON * (word in COMMON_WORDS) + _STOP * (word in STOPWORDS) + _DOMAIN * (word in DOMAIN_TERMS)
    )
    for word in COMMON_WORDS | DOMAIN_TERMS
}
_CATEGORY_VALUES = tuple(sorted(set(_CATEGORY.values())))
_PHRASES: tuple[bytes, ...] = tuple(p.encode() for p in DOMAIN_PHRASES)


def priority_value(metadata_json: str) -> float:
    """Map the user's ``priority`` metadata field to [-1, 1] (see :data:`FEATURES`)."""
    if "priority" not in metadata_json:  # skip the JSON parse for the common case
        return 0.0
    try:
        loaded = json.loads(metadata_json)
    except ValueError:
        return 0.0
    raw = loaded.get("priority") if isinstance(loaded, dict) else None
    return _priority_from(raw)


def _priority_from(raw: object) -> float:
    if isinstance(raw, bool) or raw is None:
        return 0.0
    if isinstance(raw, str):
        named = {"high": 1.0, "low": -1.0, "normal": 0.0, "medium": 0.0}
        key = raw.strip().lower()
        if key in named:
            return named[key]
        try:
            raw = float(key)
        except ValueError:
            return 0.0
    if isinstance(raw, (int, float)) and math.isfinite(raw):
        return max(-1.0, min(1.0, float(raw)))
    return 0.0


def extract_features(doc: Document) -> tuple[float, ...]:
    """The feature vector of ``doc``, in the order of :data:`FEATURE_NAMES`.

    Pure and deterministic: the same document always gives the same tuple.
    """
    text = doc.text
    raw = text.encode("utf-8")
    digits = len(raw) - len(raw.translate(None, _DIGIT_BYTES))
    cleaned = raw.translate(_WORD_TABLE)
    if not raw.isascii():
        for symbol in _SYMBOLS:
            if symbol in cleaned:
                cleaned = cleaned.replace(symbol, b" ")
    words = cleaned.split()
    n_words = len(words)
    tally = _tally(words)
    ascii_letters = len(cleaned.translate(None, _NOT_ASCII_LETTERS))
    letters = ascii_letters + len(cleaned.translate(None, _NOT_UTF8_LEADS))
    spaced = b" " + b" ".join(words)
    domain = tally[_DOMAIN] + sum(map(spaced.count, _PHRASES))
    units = len(_UNIT_RE.findall(text)) if digits else 0
    per_100 = 100.0 / (n_words + RATE_PSEUDO_WORDS)
    return (
        math.log1p(n_words),
        (n_words - tally[_COMMON]) / n_words if n_words else 0.0,
        digits / len(text) if text else 0.0,
        min(_RATE_CAP, units * per_100),
        min(_RATE_CAP, domain * per_100),
        ascii_letters / letters if letters else 0.0,
        tally[_STOP] / n_words if n_words else 0.0,
        priority_value(doc.metadata_json),
    )


def _tally(words: list[bytes]) -> dict[int, int]:
    """How many words carry each category flag (``_COMMON``, ``_STOP``, ``_DOMAIN``)."""
    categories = list(map(_CATEGORY.get, words, repeat(0)))
    by_value = {v: categories.count(v) for v in _CATEGORY_VALUES}
    return {flag: sum(n for v, n in by_value.items() if v & flag) for flag in (_COMMON, _STOP, _DOMAIN)}
