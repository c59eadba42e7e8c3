#!/usr/bin/env python3
"""Generate the synthetic sample data set that the examples and tests read.

Writes, under ``--out`` (default ``examples/data``):

* ``listings.jsonl``: property listings, one JSON object per line;
* ``market_notes.parquet``: market analyses and regulatory notes, some long enough to need
  chunking (columns ``id``, ``text``, ``metadata`` as a JSON string);
* ``malformed.jsonl``: one line per validation case, plus a few valid records;
* ``malformed_expected.json``: the intended validation outcome of each malformed line;
* ``search_judgments.json``: listing ids judged against the query
  "3 bedroom house with a garden", derived from the generated attributes, not the text.

Everything is synthetic: city and region names are real, but listings carry no address
and every price, statistic and regulation is invented. No personal data appears anywhere.
The output is deterministic for a given ``--seed``. Needs the standard library, plus ``pyarrow`` for
the Parquet file.

    python examples/make_sample_data.py --out examples/data
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["generate", "main"]

SEED = 20240611
N_LISTINGS = 300
N_LONG_LISTINGS = 16
N_GARDEN_HOUSES = 14  # forced "3 bedroom house with a garden" listings
N_BARE_STUDIOS = 12  # forced studios with no outdoor space at all
RENT_SHARE = 0.18
HIGH_PRIORITY_SHARE = 0.1
N_NOTES = 80
N_LONG_NOTES = 15
SEARCH_QUERY = "3 bedroom house with a garden"

# --------------------------------------------------------------------------------------
# Reference tables
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class City:
    name: str
    currency: str
    symbol: str
    unit: str  # "sq m" or "sq ft": how local agents quote floor area
    price_per_sqm: int
    rent_per_sqm: float  # monthly
    american: bool  # North American wording: condo, backyard, HOA fees
    warm: bool  # swimming pools are common


CITIES: tuple[City, ...] = (
    City("Manchester", "GBP", "£", "sq ft", 3600, 17.0, False, False),
    City("Leeds", "GBP", "£", "sq ft", 2900, 14.0, False, False),
    City("Bristol", "GBP", "£", "sq ft", 4300, 19.0, False, False),
    City("Edinburgh", "GBP", "£", "sq m", 4100, 18.0, False, False),
    City("Cardiff", "GBP", "£", "sq ft", 2800, 14.0, False, False),
    City("Dublin", "EUR", "€", "sq m", 5600, 27.0, False, False),
    City("Lisbon", "EUR", "€", "sq m", 5000, 20.0, False, True),
    City("Valencia", "EUR", "€", "sq m", 2600, 13.0, False, True),
    City("Rotterdam", "EUR", "€", "sq m", 4200, 19.0, False, False),
    City("Austin", "USD", "$", "sq ft", 4300, 17.0, True, True),
    City("Denver", "USD", "$", "sq ft", 4700, 18.0, True, False),
    City("Toronto", "CAD", "C$", "sq ft", 9500, 33.0, True, False),
)


@dataclass(frozen=True, slots=True)
class PropertyType:
    key: str
    name: str  # British/European wording
    us_name: str  # North American wording
    min_beds: int
    max_beds: int
    is_house: bool
    price_factor: float


PROPERTY_TYPES: dict[str, PropertyType] = {
    t.key: t
    for t in (
        PropertyType("studio", "studio flat", "studio condo", 0, 0, False, 1.15),
        PropertyType("flat", "flat", "condo", 1, 3, False, 1.0),
        PropertyType("terraced", "terraced house", "row house", 2, 4, True, 0.95),
        PropertyType("semi", "semi-detached house", "duplex", 2, 4, True, 1.0),
        PropertyType("detached", "detached house", "single-family home", 3, 6, True, 1.15),
        PropertyType("townhouse", "townhouse", "townhome", 2, 4, True, 1.05),
        PropertyType("bungalow", "bungalow", "ranch-style home", 2, 3, True, 1.0),
    )
}
TYPE_WEIGHTS: dict[str, int] = {
    "studio": 9,
    "flat": 30,
    "terraced": 14,
    "semi": 14,
    "detached": 14,
    "townhouse": 11,
    "bungalow": 8,
}
RANDOM_HOUSE_KEYS = ("terraced", "semi", "detached", "townhouse")

HOUSE_FEATURE_ODDS: dict[str, float] = {
    "garden": 0.8,
    "garage": 0.4,
    "driveway": 0.35,
    "renovated_kitchen": 0.35,
    "fireplace": 0.2,
    "home_office": 0.2,
    "solar_panels": 0.12,
}
FLAT_FEATURE_ODDS: dict[str, float] = {
    "balcony": 0.5,
    "renovated_kitchen": 0.35,
    "lift": 0.4,
    "parking": 0.3,
    "concierge": 0.12,
    "communal_garden": 0.12,
    "roof_terrace": 0.06,
}
STUDIO_FEATURE_ODDS: dict[str, float] = {"balcony": 0.2, "renovated_kitchen": 0.3, "lift": 0.3}
LOCATION_ODDS: dict[str, float] = {
    "near_schools": 0.35,
    "near_transit": 0.45,
    "near_park": 0.25,
    "near_shops": 0.3,
}
OUTDOOR_FEATURES = frozenset({"garden", "balcony", "communal_garden", "roof_terrace", "pool"})
HOOK_ORDER = ("garden", "pool", "garage", "balcony", "renovated_kitchen", "roof_terrace")

# --------------------------------------------------------------------------------------
# Listing text templates. Slots are filled from ``_listing_values``.
# --------------------------------------------------------------------------------------

ADJECTIVES = (
    "well-presented",
    "spacious",
    "bright",
    "charming",
    "modern",
    "beautifully renovated",
    "characterful",
    "light-filled",
    "generous",
    "stylish",
    "deceptively spacious",
)
STUDIO_ADJECTIVES = ("compact", "bright", "modern", "well-designed", "stylish")
SETTINGS = (
    "a quiet residential street",
    "the city centre",
    "a leafy suburb",
    "a popular family neighbourhood",
    "a waterside development",
    "a conservation area",
    "a quiet cul-de-sac",
    "a tree-lined avenue",
)
SALE_HEADLINES = (
    "{Noun} for sale in {setting}, {city}.",
    "{Adj} {noun} {hook}, {city}, offered at {price_str}.",
    "Offered at {price_str}: a {adj} {noun} {hook} in {city}.",
    "{city}: {adj} {noun} {hook} in {setting}. Asking price {price_str}.",
    "New to the market, a {adj} {noun} {hook} in {setting}, {city}.",
)
RENT_HEADLINES = (
    "{Noun} to rent in {setting}, {city}, at {price_str}.",
    "Available to let: a {adj} {noun} {hook} in {city} ({price_str}).",
    "{city} rental: {adj} {noun} {hook}, {price_str}.",
)
HOUSE_LAYOUTS = (
    "The ground floor has {living} and {kitchen}, with {beds_words} and {baths} upstairs.",
    "Downstairs you will find {living}, {kitchen} and a cloakroom; the first floor holds "
    "{beds_words} and {baths}.",
    "Accommodation is arranged over two floors: {living} and {kitchen} below, {beds_words} "
    "and {baths} above.",
)
BUNGALOW_LAYOUTS = (
    "All on one level, the accommodation comprises {beds_words}, {living}, {kitchen} and {baths}.",
    "Single-storey living with {living}, {kitchen}, {beds_words} and {baths}.",
)
FLAT_LAYOUTS = (
    "Set on the {floor} floor of {building}, it offers {living}, {kitchen}, {beds_words} "
    "and {baths}.",
    "Inside, a hallway leads to {living}, {kitchen}, {beds_words} and {baths}.",
    "The apartment sits on the {floor} floor of {building} and comprises {beds_words}, "
    "{living} and {kitchen}, plus {baths}.",
)
STUDIO_LAYOUTS = (
    "The studio combines living, sleeping and cooking space in a single room, with a "
    "separate shower room.",
    "A single open-plan room with a kitchenette along one wall and a compact shower room "
    "makes the most of the space.",
    "Set on the {floor} floor of {building}, the studio has a sleeping alcove, a "
    "kitchenette and a shower room.",
)
LIVING_ROOMS = (
    "a bright living room",
    "a through lounge",
    "an open-plan living and dining room",
    "a generous reception room",
    "a sitting room with bay window",
)
KITCHENS = ("a fitted kitchen", "a kitchen-diner", "a galley kitchen", "a separate kitchen")
BUILDINGS = (
    "a converted Victorian villa",
    "a purpose-built block from the 1990s",
    "a new-build development",
    "a 1930s mansion block",
    "a former warehouse conversion",
    "a mid-rise block with secure entry",
)
FLOORS = ("ground", "first", "second", "third", "fourth", "sixth", "ninth", "top")
SIZE_SENTENCES = (
    "Internal floor area is approximately {area_str}.",
    "The accommodation extends to around {area_str}.",
    "Total floor space: {area_str}.",
    "In all, the property measures some {area_str} internally.",
)
FEATURE_SENTENCES: dict[str, tuple[str, ...]] = {
    "garden": (
        "To the rear is a private {outdoor}, mostly laid to lawn with a paved patio that "
        "catches the afternoon sun.",
        "The {aspect}-facing {outdoor} is enclosed by mature hedging and has room for "
        "vegetable beds and a shed.",
        "Outside, a generous {outdoor} of around {garden_len} {len_unit} offers lawn, "
        "borders and a raised deck for summer dining.",
        "French doors open straight onto a well-kept {outdoor}, ideal for children and pets.",
    ),
    "garage": (
        "A single garage with power and light provides secure parking or extra storage.",
        "There is an integral double garage, reached from the utility room.",
        "A detached garage at the end of the drive doubles as a workshop.",
    ),
    "driveway": (
        "Off-street parking for two cars is provided on the block-paved driveway.",
        "A private driveway to the side offers parking for several vehicles.",
    ),
    "renovated_kitchen": (
        "The kitchen was fully renovated in {reno_year} with quartz worktops, integrated "
        "appliances and an island.",
        "A recently refitted kitchen with soft-close units and an induction hob sits at the "
        "heart of the home.",
        "The renovated kitchen includes a range cooker, plenty of storage and space for a "
        "dining table.",
    ),
    "fireplace": (
        "The sitting room retains an original fireplace with a wood-burning stove.",
        "A feature fireplace anchors the lounge.",
    ),
    "home_office": (
        "A separate study on the ground floor makes working from home easy.",
        "A small box room is currently used as a home office, with fibre broadband.",
    ),
    "solar_panels": (
        "Solar panels on the roof help keep energy bills low.",
        "The property was upgraded with solar panels, a heat pump and loft insulation.",
    ),
    "pool": (
        "The {outdoor} features a {pool_len}-metre swimming pool with a sun terrace.",
        "A heated pool and covered outdoor kitchen make the most of the climate.",
    ),
    "balcony": (
        "A {aspect}-facing balcony off the living room has space for a table and two chairs.",
        "Floor-to-ceiling windows open onto a private balcony with views across the city.",
    ),
    "lift": ("The building has a lift and a secure entry phone.",),
    "parking": (
        "An allocated parking space in the underground car park is included.",
        "One assigned space in the building's garage comes with the apartment.",
    ),
    "concierge": ("Residents benefit from a daytime concierge and a shared gym.",),
    "communal_garden": ("Residents share a well-maintained communal garden.",),
    "roof_terrace": ("A shared roof terrace offers views over the rooftops.",),
    "near_schools": (
        "Several well-regarded primary and secondary schools are within walking distance.",
        "The property falls within the catchment area of a popular primary school.",
        "It is a short walk to local schools, making it a strong choice for families.",
    ),
    "near_transit": (
        "The nearest {station} is a {walk_min}-minute walk, with frequent services to the "
        "city centre.",
        "Transport links are excellent: buses stop at the end of the road and the "
        "{station} is {walk_min} minutes on foot.",
    ),
    "near_park": (
        "A large public park with playing fields and a café is around the corner.",
        "Riverside walks and a nature reserve are within easy reach.",
    ),
    "near_shops": (
        "Independent shops, cafés and a supermarket are all close by.",
        "Everyday shopping is a few minutes away on the high street.",
    ),
}
NO_OUTDOOR_SENTENCES = (
    "Please note there is no private outdoor space.",
    "The flat has no balcony or garden, which is reflected in the price.",
    "There is no outdoor space, but the building is close to a public square.",
)
STATIONS = ("train station", "metro station", "tram stop", "light rail station", "bus hub")
SALE_CLOSINGS = (
    "Offered with no onward chain.",
    "Energy rating: {epc}.",
    "Early viewing is strongly recommended.",
    "Contact the agency to arrange a viewing.",
)
UK_TENURE = {True: "Freehold.", False: "Leasehold with {lease_years} years remaining."}
US_CLOSINGS = (
    "HOA fees of {symbol}{hoa} per month cover exterior maintenance.",
    "Annual property taxes are approximately {symbol}{tax:,}.",
)
RENT_CLOSINGS = (
    "Available from {month}, {furnished}.",
    "A deposit equal to five weeks' rent is required; pets considered.",
    "Minimum twelve-month tenancy.",
    "Council tax band {band}; utilities are not included.",
)
LONG_ROOM_SENTENCES: dict[str, tuple[str, ...]] = {
    "house": (
        "The entrance hall has original tiled flooring and a useful understairs cupboard.",
        "The principal bedroom overlooks the {outdoor_or_street} and has fitted wardrobes "
        "along one wall.",
        "The other bedrooms are comfortable rooms with space for a desk or a cot.",
        "The family bathroom has a bath with shower over, a heated towel rail and modern "
        "white fittings.",
        "A utility room behind the kitchen houses the washing machine and boiler.",
        "Throughout, the house has been redecorated in neutral tones, with new carpets on "
        "the upper floor.",
        "Double glazing and a recently serviced boiler keep the house warm in winter.",
        "The loft is boarded and insulated, with a pull-down ladder for easy storage.",
        "Ceiling heights on the ground floor are generous, and the sash windows have been "
        "carefully restored.",
    ),
    "flat": (
        "The entrance hall has a large storage cupboard with space for coats and shoes.",
        "The living area enjoys dual-aspect windows and engineered oak flooring.",
        "The principal bedroom has built-in wardrobes and a window overlooking the "
        "{outdoor_or_street}.",
        "The bathroom is fully tiled with a rainfall shower over the bath.",
        "Communal areas are clean and well maintained, with secure bike storage.",
        "The apartment has been repainted throughout and is ready to move into.",
        "Underfloor heating runs through the main rooms, controlled by a smart thermostat.",
        "Acoustic insulation between floors keeps the apartment quiet.",
    ),
    "studio": (
        "A built-in wardrobe and overhead cupboards make good use of the wall space.",
        "The main room has a large window that fills the space with light.",
        "The kitchenette includes a two-ring induction hob, a combination microwave and a "
        "slimline dishwasher.",
        "The shower room has been refitted with a glass screen and a heated towel rail.",
        "A fold-down bed frees the floor during the day.",
        "The building has secure bike storage and a shared laundry room.",
        "The studio has been repainted throughout and is ready to move into.",
    ),
}
LONG_AREA_SENTENCES = (
    "The neighbourhood has a strong community feel, with a weekly farmers' market and a "
    "busy calendar of local events.",
    "Restaurants, a cinema and a gym are within a ten-minute walk.",
    "Cyclists can reach the city centre in about {cycle_min} minutes along a dedicated lane.",
    "The area has seen steady investment in recent years, including a new library and "
    "improved street lighting.",
    "For weekends, the coast and the countryside are both under an hour's drive away.",
    "A medical centre, a pharmacy and a post office are all within a short walk.",
    "The local sports club offers tennis courts, a swimming pool and junior football.",
)

# --------------------------------------------------------------------------------------
# Market and regulatory note templates. Slots are filled from ``_note_values``.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Market:
    country: str  # as used mid-sentence: "the UK", "Portugal"
    symbol: str
    regions: tuple[str, ...]
    price_base: int  # typical home price, scales the invented statistics
    rent_base: int  # typical monthly rent
    sqm_base: int  # typical price per square metre


MARKETS: tuple[Market, ...] = (
    Market(
        "the UK",
        "£",
        (
            "Greater Manchester",
            "West Yorkshire",
            "Bristol and the South West",
            "Edinburgh and the Lothians",
            "South Wales",
            "Greater London",
        ),
        290_000,
        1_250,
        3_700,
    ),
    Market(
        "Ireland",
        "€",
        ("Dublin city", "the Dublin commuter belt", "Cork", "Galway"),
        340_000,
        1_900,
        4_600,
    ),
    Market("Portugal", "€", ("Lisbon", "Porto", "the Algarve", "Setúbal"), 260_000, 1_200, 3_100),
    Market(
        "Spain",
        "€",
        ("Valencia city", "Alicante province", "Madrid", "Málaga"),
        210_000,
        1_000,
        2_300,
    ),
    Market(
        "the Netherlands",
        "€",
        ("Rotterdam", "Amsterdam", "Utrecht", "The Hague"),
        430_000,
        1_700,
        4_800,
    ),
    Market(
        "the US",
        "$",
        ("Austin", "Denver", "Dallas-Fort Worth", "Colorado Springs", "San Antonio"),
        420_000,
        1_900,
        3_400,
    ),
    Market(
        "Canada",
        "C$",
        ("Toronto", "the Greater Toronto Area suburbs", "Ottawa", "Hamilton"),
        720_000,
        2_400,
        6_800,
    ),
)


@dataclass(frozen=True, slots=True)
class Topic:
    key: str
    kind: str  # "market_analysis" or "regulatory_note"
    titles: tuple[str, ...]
    sentences: tuple[str, ...]


TOPICS: tuple[Topic, ...] = (
    Topic(
        "interest_rate_outlook",
        "market_analysis",
        (
            "Interest rate outlook for {country}, {quarter} {year}",
            "Where next for mortgage rates in {country}?",
            "Rates watch: {country} housing finance after the {month_name} decision",
        ),
        (
            "The central bank {rate_move} its policy rate to {rate}% at its {month_name} "
            "meeting, a move of {bps} basis points.",
            "Headline inflation stood at {infl}% in the latest release, against a target "
            "of {infl_target}%.",
            "Two-year fixed mortgage rates averaged {fix2}% in {quarter}, while five-year "
            "fixes were priced at {fix5}%.",
            "Swap rates, which lenders use to price fixed products, have moved within a "
            "narrow band around {swap}% over the past {months} months.",
            "Markets now price roughly {n_cuts} further quarter-point moves over the next "
            "year, although the path remains data-dependent.",
            "Borrowers coming off fixed deals agreed when rates were near record lows face "
            "payment increases of {pay_jump}% on average.",
            "Lenders have trimmed margins to compete for a shrinking pool of purchase "
            "applications, particularly at {ltv}% loan-to-value and below.",
            "Tracker mortgages now account for around {share_pct}% of new lending, up from "
            "a low base last year.",
            "Wage growth of {wage}% has partly offset higher repayment costs for first-time "
            "buyers in {sub}.",
            "A sustained fall in rates would likely release pent-up demand, especially among "
            "second-steppers who postponed moves.",
        ),
    ),
    Topic(
        "rental_yield_analysis",
        "market_analysis",
        (
            "Rental yield analysis: {country}, {quarter} {year}",
            "Buy-to-let returns in {region}",
            "Where the yields are: {region} rental market review",
        ),
        (
            "Gross rental yields in {sub} averaged {yield_gross}%, falling to about "
            "{yield_net}% after management fees, insurance, maintenance and voids.",
            "Achieved rents rose {rent_growth}% year on year, outpacing capital growth for "
            "the {ordinal} consecutive quarter.",
            "One-bedroom flats continue to deliver the highest gross yields, while larger "
            "family houses offer better tenant retention.",
            "Average void periods shortened to {void_weeks} weeks as tenant demand remained "
            "well ahead of available stock.",
            "Landlords financing purchases with interest-only mortgages at {fix5}% need a "
            "gross yield above roughly {yield_hurdle}% to stay cash-flow positive.",
            "Vacancy in purpose-built rental schemes across {region} sits at just {vacancy}%.",
            "Student-let properties near the universities in {sub} reported yields up to "
            "{yield_peak}%, though with higher management costs.",
            "The number of rental listings in {sub} is {stock_pct}% below its five-year average.",
            "Smaller portfolio landlords continue to sell, with {share_pct}% of sales "
            "agreed in {quarter} involving a former rental property.",
            "Institutional investors are concentrating on build-to-rent blocks with "
            "amenity space rather than scattered single homes.",
        ),
    ),
    Topic(
        "zoning_changes",
        "regulatory_note",
        (
            "Zoning changes in {region}: what the new plan means",
            "Planning reform brief: {region}, {year}",
            "Upzoning proposals for {sub} explained",
        ),
        (
            "The revised local plan for {region} raises the permitted density on "
            "transport corridors to {density} homes per hectare.",
            "Buildings of up to {storeys} storeys will be allowed within 800 metres of "
            "major stations, subject to design review.",
            "Minimum parking requirements are removed for developments within walking "
            "distance of frequent public transport.",
            "The consultation runs for {consult_weeks} weeks, and the council expects to "
            "adopt the plan in {quarter} {year_next}.",
            "Around {n_sites} sites have been identified for residential allocation, with "
            "a combined capacity of roughly {units:,} homes.",
            "Detached-house-only zones in {sub} will be rezoned to allow up to four units "
            "per lot, including duplexes and small apartment buildings.",
            "Affordable housing contributions rise to {share_pct}% of units on schemes of "
            "ten homes or more.",
            "Objectors argue that local schools and roads lack the capacity for the "
            "proposed growth, and several amendments are expected.",
            "Conversions of single-family homes into flats will no longer need a full "
            "planning application where external changes are minor.",
            "Landowners holding sites in {sub} could see values rise materially once "
            "allocations are confirmed.",
        ),
    ),
    Topic(
        "energy_performance_regulation",
        "regulatory_note",
        (
            "Energy performance rules for rented homes: {country} update",
            "Minimum energy efficiency standards, {year}: a guide for landlords",
            "EPC requirements and the {epc_year} deadline",
        ),
        (
            "From {epc_year}, privately rented homes must reach at least an energy rating "
            "of {epc_min} before a new tenancy can begin.",
            "An estimated {share_pct}% of rented homes in {sub} currently fall below the "
            "proposed minimum.",
            "The cost cap on required improvements is set at {symbol}{retrofit_cap:,} per "
            "property, after which an exemption can be registered.",
            "Typical upgrades include loft and cavity wall insulation, double glazing, "
            "heat pumps and smart heating controls.",
            "Non-compliant landlords face penalties of up to {symbol}{fine:,} per property.",
            "Lenders are beginning to offer discounted green mortgages for homes rated "
            "{epc_min} or better, with rate reductions of about {green_bps} basis points.",
            "Older solid-wall terraces are among the most expensive homes to bring up to "
            "standard, with average retrofit costs near {symbol}{retrofit_cost:,}.",
            "Energy certificates older than ten years will need to be renewed before a "
            "property is re-let.",
            "Sales evidence from {sub} suggests homes with better ratings achieve a premium "
            "of around {premium_pct}% over comparable properties.",
            "A phased timetable applies: new tenancies first, then all existing tenancies "
            "{months} months later.",
        ),
    ),
    Topic(
        "mortgage_stress_tests",
        "regulatory_note",
        (
            "Mortgage stress test changes: {country}, {year}",
            "Affordability rules and the stress buffer explained",
            "Regulator review of mortgage stress testing, {quarter} {year}",
        ),
        (
            "The regulator has confirmed that lenders must assess affordability at the "
            "higher of the product rate plus {buffer} percentage points or {stress_rate}%.",
            "Loan-to-income lending above {lti_limit} times is limited to {lti_share}% of each "
            "lender's new mortgages.",
            "The change is expected to lift maximum borrowing for a typical household by "
            "roughly {borrow_pct}%.",
            "First-time buyers in {sub} are most affected, because deposits there already "
            "stretch household savings.",
            "Lenders retain discretion to apply stricter tests to interest-only and "
            "self-employed applicants.",
            "The macroprudential review concluded that household debt-to-income ratios "
            "remain below their pre-crisis peak.",
            "Arrears of more than three months stand at {arrears}% of outstanding mortgages, "
            "low by historical standards.",
            "Brokers report that applications declined on affordability grounds fell by "
            "{decline_pct}% in the weeks after the announcement.",
            "Borrowers remortgaging with their existing lender can often skip a full "
            "affordability assessment, which helps those on expiring fixes.",
            "The rules will be reviewed again in {year_next}, with the regulator signalling "
            "no appetite for further loosening.",
        ),
    ),
    Topic(
        "house_price_index",
        "market_analysis",
        (
            "House price index commentary: {country}, {quarter} {year}",
            "Monthly price report for {region}",
            "Prices, sales and stock: {region} in {quarter}",
        ),
        (
            "Average prices in {sub} {price_dir} {price_pct_abs}% over the year to "
            "{quarter} {year}.",
            "Homes took an average of {days_on_market} days to go under offer, {dom_dir} "
            "than a year ago.",
            "Sales agreed were {sales_pct_abs}% {sales_dir} than the same period last year.",
            "The gap between asking prices and agreed prices widened to {discount}%, as "
            "buyers regained some negotiating power.",
            "Detached houses outperformed flats, reflecting continued demand for space and "
            "gardens.",
            "New instructions to sell rose {stock_pct}%, giving buyers the widest choice in "
            "several years.",
            "The typical first-time buyer property in {sub} now costs {lti} times average "
            "earnings.",
            "Cash buyers accounted for {share_pct}% of completed purchases, a historically "
            "high share.",
            "Prime central locations lagged the wider market, while commuter towns "
            "recorded the strongest gains.",
            "Price growth remains highly local, with a spread of more than ten points "
            "between the strongest and weakest districts.",
        ),
    ),
    Topic(
        "short_term_rental_rules",
        "regulatory_note",
        (
            "Short-term rental rules in {region}: licensing update",
            "Holiday lets and the new registration scheme",
            "New limits on short-term letting in {sub}",
        ),
        (
            "Hosts in {sub} will need a licence to let an entire home for fewer than "
            "thirty consecutive nights.",
            "Whole-home short lets are capped at {nights} nights per calendar year without "
            "a change-of-use consent.",
            "Platforms must display a valid registration number on every listing and share "
            "booking data with the city each quarter.",
            "Fines for operating without a licence reach {symbol}{fine:,}, with repeat "
            "offences leading to removal from platforms.",
            "The city estimates that {units:,} homes have been withdrawn from the long-term "
            "rental market for tourist use.",
            "Owner-occupiers letting a spare room remain exempt from the night cap.",
            "Apartment buildings may now ban short lets through a majority vote of owners.",
            "Early data show a {stock_pct}% fall in active short-let listings in {sub} since "
            "the rules were announced.",
            "Investors relying on holiday-let income should review forecasts, since yields "
            "on long-term lets are typically {yield_gap} points lower.",
            "Licences are valid for {licence_years} years and require fire safety and "
            "energy certificates.",
        ),
    ),
    Topic(
        "construction_costs",
        "market_analysis",
        (
            "Construction costs and housing supply in {country}",
            "Build cost tracker, {quarter} {year}",
            "Housing completions and build costs in {region}",
        ),
        (
            "Build cost inflation eased to {cost_infl}% year on year, down from double-digit "
            "rates two years ago.",
            "Housing completions in {region} reached {completions:,} in the past twelve "
            "months, well short of the official target.",
            "Housing starts were {starts_pct}% lower than a year earlier as developers "
            "delayed sites awaiting better sales rates.",
            "Labour shortages persist in skilled trades such as electricians and "
            "bricklayers, adding to programme delays.",
            "Timber and steel prices have stabilised, while concrete and insulation remain "
            "expensive.",
            "Viability margins for mid-market apartment schemes in {sub} have fallen to "
            "around {margin}%.",
            "Modular construction accounts for only a small share of output but is growing "
            "in the rental segment.",
            "Higher energy and accessibility standards add an estimated {symbol}"
            "{retrofit_cost:,} to the cost of a typical new home.",
            "Planning approvals lead completions by about {months} months, pointing to weak "
            "supply into next year.",
            "Smaller builders cite access to development finance as their main constraint.",
        ),
    ),
    Topic(
        "rent_control",
        "regulatory_note",
        (
            "Rent regulation update: {region}",
            "Rent caps and tenant protections, {year}",
            "What the new rent stabilisation rules mean for landlords in {sub}",
        ),
        (
            "In-tenancy rent increases are limited to {rent_cap}% a year, or inflation if lower.",
            "The cap applies to existing tenancies only; rents can be reset to market levels "
            "between tenants.",
            "Landlords must give {notice_months} months' written notice of any increase.",
            "Newly built homes are exempt from the cap for their first {exempt_years} years "
            "to protect investment in supply.",
            "Tenant groups say the cap leaves many households facing increases above wage "
            "growth in {sub}.",
            "Landlord associations warn the rules could accelerate the exit of small "
            "landlords from the market.",
            "A new rent register will record agreed rents for every tenancy from {quarter} "
            "{year_next}.",
            "No-fault evictions are replaced by a defined list of possession grounds.",
            "Average advertised rents in {sub} rose {rent_growth}% over the year, ahead of "
            "the permitted in-tenancy increase.",
            "Disputes over increases will go to a tribunal rather than the courts.",
        ),
    ),
    Topic(
        "transaction_taxes",
        "regulatory_note",
        (
            "Property transfer tax changes in {country}",
            "Stamp duty and transfer tax: {year} thresholds",
            "Transaction tax reform and the housing market",
        ),
        (
            "The nil-rate threshold for first-time buyers falls to {symbol}{threshold:,} "
            "from the start of the next tax year.",
            "Buyers of additional homes pay a surcharge of {surcharge} percentage points on "
            "top of standard rates.",
            "The top marginal rate of {tax_rate}% applies to the portion of the price above "
            "{symbol}{threshold_top:,}.",
            "Transactions were brought forward ahead of the deadline, inflating sales "
            "volumes in {quarter}.",
            "The treasury expects the change to raise about {symbol}{revenue}m a year.",
            "A typical purchase in {sub} will attract roughly {symbol}{tax_bill:,} more tax "
            "after the change.",
            "Non-resident buyers face an additional {nonres} percentage point charge.",
            "Agents expect a short lull in activity once the higher rates take effect.",
            "Relief for multiple-dwelling purchases has been abolished, affecting "
            "portfolio investors.",
            "The measure will be reviewed after {months} months to assess its effect on "
            "first-time buyers.",
        ),
    ),
    Topic(
        "commercial_to_residential",
        "market_analysis",
        (
            "Office-to-residential conversions in {region}",
            "Converting empty offices into homes: opportunities and pitfalls",
            "Change-of-use pipeline report, {quarter} {year}",
        ),
        (
            "Office vacancy in central {sub} has climbed to {vacancy}%, the highest in over "
            "a decade.",
            "Around {units:,} homes are in the conversion pipeline across {region}.",
            "Deep floor plates make many post-war offices hard to convert without "
            "light wells or partial demolition.",
            "Conversion costs average {symbol}{conv_cost:,} per square metre, "
            "compared with {symbol}{new_cost:,} for new-build apartments.",
            "Permitted development rights allow some conversions without full planning "
            "permission, subject to minimum space standards.",
            "Converted units tend to be smaller, with studios and one-bedroom flats making "
            "up {share_pct}% of the pipeline.",
            "Investors see conversions as a way to add rental supply close to jobs and transport.",
            "Daylight and noise standards are the most common reasons for refusal.",
            "Secondary high-street retail is also being converted, often with homes above "
            "ground-floor shops.",
            "The city has offered a fast-track planning route for schemes that include "
            "affordable homes.",
        ),
    ),
    Topic(
        "flood_risk_insurance",
        "market_analysis",
        (
            "Flood risk, insurance and property values in {region}",
            "Climate risk and home insurance: {country} review",
            "Flood maps updated for {sub}: implications for owners",
        ),
        (
            "Updated flood maps place an additional {units:,} homes in {region} in the "
            "medium- or high-risk category.",
            "Buildings insurance premiums for high-risk homes rose {premium_rise}% over the "
            "past year.",
            "Lenders increasingly require a flood risk report before approving mortgages on "
            "riverside properties.",
            "Homes in {sub} that flooded in the past decade sell at a discount of around "
            "{discount}% to comparable homes.",
            "Property-level resilience measures such as flood doors and raised sockets can "
            "lower premiums.",
            "A government-backed reinsurance scheme keeps cover affordable for older homes, "
            "but excludes properties built after {build_cutoff}.",
            "Surface water flooding now accounts for more claims than river flooding in "
            "urban areas.",
            "Planning guidance steers new homes away from flood zones unless no alternative "
            "sites exist.",
            "Buyers are advised to check flood history and insurance quotes before "
            "exchanging contracts.",
            "Coastal erosion risk is being mapped for the first time, with results due in "
            "{year_next}.",
        ),
    ),
)

GENERIC_SECTION_SENTENCES: dict[str, tuple[str, ...]] = {
    "Background": (
        "Housing markets in {country} have adjusted to a period of higher borrowing costs "
        "after more than a decade of cheap credit.",
        "Transaction volumes remain below their long-run average, although the pace of "
        "decline has slowed.",
        "Household incomes have recovered in real terms after the inflation shock, "
        "improving affordability at the margin.",
        "Policy makers are trying to balance financial stability against the need for more homes.",
        "The rental sector has absorbed much of the demand from households priced out of "
        "ownership.",
        "Demographic growth in {region} continues to outpace new housing supply.",
        "Regional divergence is a recurring theme, with smaller cities outperforming the "
        "largest metros.",
        "This note builds on our previous report published in {quarter_prev}.",
    ),
    "Implications for buyers": (
        "Buyers with larger deposits are best placed to benefit from the current pricing.",
        "Negotiating room has increased, particularly on properties that have been on the "
        "market for more than {days_on_market} days.",
        "First-time buyers should budget for higher monthly costs than the headline rate "
        "suggests once fees are included.",
        "Shorter fixed terms offer flexibility if rates fall, at the cost of higher uncertainty.",
        "Energy efficiency deserves more weight in purchase decisions, given running costs "
        "and future regulation.",
        "Family buyers continue to prioritise gardens, extra bedrooms and proximity to good "
        "schools.",
    ),
    "Implications for landlords and investors": (
        "Landlords should model returns under a range of rate and rent scenarios rather "
        "than relying on recent growth.",
        "Compliance costs are rising and should be built into acquisition appraisals.",
        "Well-located, energy-efficient stock is likely to hold value better than older "
        "housing in need of upgrades.",
        "Portfolio landlords are consolidating towards fewer, larger assets.",
        "Tenant demand remains strong, which supports occupancy even where rent growth slows.",
        "Refinancing risk is concentrated among landlords whose fixed-rate loans expire in "
        "the next {months} months.",
    ),
    "Implications for lenders": (
        "Lenders face a trade-off between volume targets and credit quality.",
        "Product transfers now make up a large share of mortgage activity.",
        "Affordability assessments should reflect realistic energy and maintenance costs.",
        "Forbearance options remain important for borrowers facing temporary difficulty.",
        "Competition at low loan-to-value tiers has compressed margins.",
        "Climate and physical risk data are being integrated into collateral valuation.",
    ),
    "Risks to the outlook": (
        "A renewed rise in inflation would delay rate cuts and weigh on demand.",
        "A sharp increase in unemployment would quickly translate into higher arrears.",
        "Policy uncertainty ahead of the next budget could hold back transactions.",
        "Global financial conditions remain a source of volatility for funding costs.",
        "Construction insolvencies could further constrain new supply.",
        "On the upside, faster wage growth could support a quicker recovery in activity.",
        "Regulatory changes may be implemented faster than the market expects.",
        "Local shocks, such as a major employer relocating, can move prices sharply in "
        "smaller markets.",
    ),
    "Outlook": (
        "We expect average prices in {country} to move within a range of minus two to plus "
        "four per cent over the next year.",
        "Rental growth is likely to slow but remain positive while supply stays tight.",
        "Transaction volumes should recover gradually as affordability improves.",
        "The balance of risks is tilted slightly to the downside in the near term.",
        "Markets with strong employment growth, including {sub}, should outperform.",
        "We will revisit these forecasts after the next policy announcement in {quarter_next}.",
    ),
    "Methodology": (
        "Figures are based on agreed-sale and advertised-rent data aggregated to district level.",
        "Yields are calculated on asking rents and asking prices and may overstate "
        "achieved returns.",
        "Seasonally adjusted series are used where monthly volatility would otherwise "
        "obscure the trend.",
        "Regional figures with fewer than fifty observations are suppressed.",
        "All monetary values are nominal and in local currency.",
        "Survey responses were collected from agents, lenders and developers during "
        "{quarter} {year}.",
    ),
}
REGION_SENTENCES = (
    "In {sub}, average prices {r_dir} {r_price_abs}% over the year, while gross yields "
    "averaged {r_yield}%.",
    "Homes in {sub} typically sold within {r_days} days, and advertised rents rose {r_rent}%.",
    "Stock levels in {sub} are {r_stock}% higher than a year ago, easing pressure on buyers.",
    "{Sub} remains one of the tighter rental markets in {country}, with vacancy close to "
    "{r_vacancy}%.",
    "Local agents in {sub} report steady interest from families looking for houses with "
    "gardens near good schools.",
    "New-build supply in {sub} is concentrated in a handful of large schemes on the edge "
    "of the city.",
    "Demand in {sub} has been supported by new employers and improved transport links.",
    "Affordability in {sub} is stretched, with typical homes costing {r_lti} times local earnings.",
)
LONG_NOTE_SECTIONS = (
    "Executive summary",
    "Background",
    "Key findings",
    "Regional breakdown",
    "Implications for buyers",
    "Implications for landlords and investors",
    "Implications for lenders",
    "Risks to the outlook",
    "Outlook",
    "Methodology",
    "Data appendix",
)
MAX_APPENDIX_TABLES = 4


@dataclass(frozen=True, slots=True)
class Metric:
    """A statistic that reports quote; ``kind`` picks its unit and how it is printed."""

    name: str  # lower case, as used mid-sentence
    kind: str  # "price", "rent", "sqm", "count", "days" or "pct"
    low: float  # range of plausible values (a multiple of the market base for money)
    high: float


METRICS: tuple[Metric, ...] = (
    Metric("the average asking price", "price", 0.7, 1.5),
    Metric("the median agreed sale price", "price", 0.65, 1.4),
    Metric("the average advertised rent", "rent", 0.7, 1.6),
    Metric("the average price per square metre", "sqm", 0.6, 1.8),
    Metric("the number of sales agreed", "count", 300, 6000),
    Metric("the number of new listings", "count", 400, 9000),
    Metric("mortgage approvals", "count", 200, 4000),
    Metric("the average time to sell", "days", 18, 110),
    Metric("the average gross yield", "pct", 3.5, 8.5),
    Metric("the share of cash buyers", "pct", 15, 45),
    Metric("the share of first-time buyers", "pct", 20, 55),
    Metric("the rental vacancy rate", "pct", 0.8, 6.5),
    Metric("the average loan-to-value ratio", "pct", 55, 85),
    Metric("the number of active rental listings", "count", 150, 5000),
)
# Slots: metric/Metric, sub, value, prev, change ("4.1%" or "0.4 percentage points"),
# rose_fell, higher_lower, gap, above_below, period, period_prev, country.
DATA_SENTENCES = (
    "Over the year to {period}, {metric} in {sub} {rose_fell} by {change} to {value}.",
    "{Metric} in {sub} moved from {prev} to {value} between {period_prev} and {period}.",
    "At {value}, {metric} in {sub} stood {change} {higher_lower} than a year earlier.",
    "Our data put {metric} in {sub} at {value} in {period}, against {prev} twelve months before.",
    "In {period}, {sub} registered {value} for {metric}, {gap} {above_below} the figure for "
    "{country} as a whole.",
    "{Metric} in {sub} {rose_fell} {change} year on year, reaching {value} in {period}.",
    "Compared with {period_prev}, {metric} in {sub} is {change} {higher_lower}, at {value}.",
    "{Sub} saw {metric} settle at {value} in {period}, {change} {higher_lower} than in "
    "{period_prev}.",
)
# Qualitative commentary, combined at random: segment x trend x reason x wording.
SEGMENTS = (
    "one-bedroom flats",
    "family houses with gardens",
    "new-build apartments",
    "period terraced houses",
    "detached homes",
    "student lets",
    "prime properties",
    "entry-level homes",
    "homes with poor energy ratings",
    "townhouses near the centre",
)
TRENDS = (
    "outperformed the wider market",
    "lagged the wider market",
    "drew the strongest buyer interest",
    "attracted fewer viewings than a year ago",
    "held their value better than most",
    "saw asking prices soften",
    "let faster than any other property type",
    "took the longest to sell",
)
REASONS = (
    "reflecting demand from first-time buyers",
    "as investors stepped back",
    "given the shortage of supply",
    "as higher mortgage rates bit",
    "helped by improved transport links",
    "amid concerns over running costs",
    "as remote workers looked for more space",
    "with landlords selling up",
    "as developers offered incentives",
    "supported by local employment growth",
)
COMMENTARY_SENTENCES = (
    "In {sub}, {segment} {trend}, {reason}.",
    "{Segment} in {sub} {trend}, {reason}.",
    "Agents in {sub} report that {segment} {trend}, {reason}.",
    "Our survey suggests that {segment} in {sub} {trend} this quarter, {reason}.",
)
MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
ORDINALS = ("second", "third", "fourth", "fifth", "sixth")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")

# --------------------------------------------------------------------------------------
# Malformed records: each line exercises one validation case (see README.md).
# --------------------------------------------------------------------------------------

DUPLICATE_OF = "listing-0042"


@dataclass(frozen=True, slots=True)
class MalformedCase:
    case: str
    raw: str  # the exact line written to malformed.jsonl
    outcome: str  # "accept" or "dead_letter"
    reason: str


def _case(case: str, record: object, outcome: str, reason: str) -> MalformedCase:
    return MalformedCase(case, json.dumps(record, ensure_ascii=False), outcome, reason)


MALFORMED_CASES: tuple[MalformedCase, ...] = (
    _case(
        "valid",
        {
            "id": "extra-001",
            "text": "Two-bedroom flat with a balcony overlooking "
            "the canal, close to the tram stop. Offered at €320,000.",
            "metadata": {
                "kind": "listing",
                "city": "Rotterdam",
                "price": 320000,
                "bedrooms": 2,
                "priority": "normal",
            },
        },
        "accept",
        "well-formed record with metadata",
    ),
    MalformedCase(
        "not_json",
        '{"id": "bad-json-001", "text": "Three bedroom house with a garden, truncated',
        "dead_letter",
        "line is not valid JSON (unterminated string); parse error",
    ),
    _case(
        "json_array",
        ["bad-array-001", "Studio flat near the station."],
        "dead_letter",
        "JSON value is an array, not an object",
    ),
    _case(
        "missing_id",
        {
            "text": "Detached bungalow with a large garden and a double garage.",
            "metadata": {"kind": "listing", "city": "Cardiff"},
        },
        "dead_letter",
        "required field 'id' is missing",
    ),
    _case(
        "missing_text",
        {"id": "bad-no-text-001", "metadata": {"kind": "listing", "city": "Leeds"}},
        "dead_letter",
        "required field 'text' is missing",
    ),
    _case(
        "text_not_string",
        {"id": "bad-text-number-001", "text": 42},
        "dead_letter",
        "field 'text' is a number, not a string",
    ),
    _case(
        "empty_text",
        {"id": "bad-empty-text-001", "text": ""},
        "dead_letter",
        "field 'text' is empty",
    ),
    _case(
        "whitespace_text",
        {"id": "bad-blank-text-001", "text": "   \n\t  "},
        "dead_letter",
        "field 'text' is only whitespace (empty after stripping)",
    ),
    _case(
        "duplicate_id",
        {
            "id": DUPLICATE_OF,
            "text": "Renovated four-bedroom townhouse "
            "with a roof terrace, listed again with different text.",
            "metadata": {"kind": "listing", "city": "Bristol", "priority": "normal"},
        },
        "dead_letter",
        f"id {DUPLICATE_OF!r} already seen in listings.jsonl with "
        "different text; first occurrence wins (accepted if this file is read alone)",
    ),
    _case(
        "numeric_id",
        {
            "id": 4242,
            "text": "One-bedroom flat with a renovated kitchen "
            "near the university, available to rent from September.",
        },
        "accept",
        "integer id is coerced to the string '4242' (floats and booleans are rejected)",
    ),
    _case(
        "valid_no_metadata",
        {
            "id": "extra-002",
            "text": "Ático de 2 dormitorios con terraza de 30 m² en Valencia, cerca del metro.",
        },
        "accept",
        "valid record without metadata and with non-ASCII text",
    ),
    _case(
        "valid",
        {
            "id": "extra-003",
            "text": "Semi-detached three-bedroom house with a "
            "south-facing garden and off-street parking, near primary schools.",
            "metadata": {
                "kind": "listing",
                "city": "Manchester",
                "price": 365000,
                "bedrooms": 3,
                "priority": "high",
            },
        },
        "accept",
        "well-formed record with metadata",
    ),
)

# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _fill(template: str, values: Mapping[str, object]) -> str:
    return template.format_map(values)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _words(text: str) -> int:
    return len(text.split())


def _draw_features(odds: Mapping[str, float], rng: random.Random) -> set[str]:
    return {name for name, p in odds.items() if rng.random() < p}


class _Deck:
    """Draws templates without repetition until the pool is exhausted, then reshuffles."""

    def __init__(self, items: Sequence[str], rng: random.Random) -> None:
        self._items = list(items)
        self._rng = rng
        self._pending = self._shuffled()

    def _shuffled(self) -> list[str]:
        items = self._items[:]
        self._rng.shuffle(items)
        return items

    @property
    def fresh(self) -> bool:
        """True while some template has not been drawn yet in the current round."""
        return bool(self._pending)

    def draw(self) -> str:
        if not self._pending:
            self._pending = self._shuffled()
        return self._pending.pop()


# --------------------------------------------------------------------------------------
# Listings
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListingSpec:
    """The ground truth of one listing; the text is rendered from it."""

    id: str
    city: City
    ptype: PropertyType
    bedrooms: int
    area_sqm: int
    price: int
    for_rent: bool
    features: frozenset[str]
    long: bool
    priority: str
    forced: str  # "garden_house", "bare_studio" or ""


def _area_sqm(ptype: PropertyType, bedrooms: int, rng: random.Random) -> int:
    if ptype.key == "studio":
        return rng.randint(24, 40)
    base = 30 + bedrooms * rng.uniform(17, 27) + (18 if ptype.is_house else 0)
    return int(base)


def _price(city: City, ptype: PropertyType, area: int, rent: bool, rng: random.Random) -> int:
    jitter = rng.uniform(0.85, 1.2)
    if rent:
        return int(round(area * city.rent_per_sqm * ptype.price_factor * jitter / 25) * 25)
    raw = area * city.price_per_sqm * ptype.price_factor * jitter
    step = 5000 if raw >= 200_000 else 1000
    return int(round(raw / step) * step)


def _features(ptype: PropertyType, city: City, forced: str, rng: random.Random) -> set[str]:
    if forced == "bare_studio":
        return _draw_features(LOCATION_ODDS, rng) | ({"lift"} if rng.random() < 0.4 else set())
    if ptype.is_house:
        odds = dict(HOUSE_FEATURE_ODDS, pool=0.3 if city.warm else 0.02)
    else:
        odds = STUDIO_FEATURE_ODDS if ptype.key == "studio" else FLAT_FEATURE_ODDS
    found = _draw_features(odds, rng) | _draw_features(LOCATION_ODDS, rng)
    if forced == "garden_house":
        found.add("garden")
    return found


def _pick_type(forced: str, rng: random.Random) -> PropertyType:
    if forced == "garden_house":
        return PROPERTY_TYPES[rng.choice(RANDOM_HOUSE_KEYS)]
    if forced == "bare_studio":
        return PROPERTY_TYPES["studio"]
    keys = list(TYPE_WEIGHTS)
    return PROPERTY_TYPES[rng.choices(keys, weights=[TYPE_WEIGHTS[k] for k in keys])[0]]


def _pick_city(forced: str, rng: random.Random) -> City:
    # Forced garden houses use British/European wording, so the text says "garden".
    pool = [c for c in CITIES if not c.american] if forced == "garden_house" else CITIES
    return rng.choice(pool)


def _make_listing_spec(index: int, forced: str, long: bool, rng: random.Random) -> ListingSpec:
    ptype = _pick_type(forced, rng)
    city = _pick_city(forced, rng)
    beds = 3 if forced == "garden_house" else rng.randint(ptype.min_beds, ptype.max_beds)
    area = _area_sqm(ptype, beds, rng)
    rent = forced != "garden_house" and rng.random() < RENT_SHARE
    high = rng.random() < (0.4 if long else HIGH_PRIORITY_SHARE)
    return ListingSpec(
        id=f"listing-{index:04d}",
        city=city,
        ptype=ptype,
        bedrooms=beds,
        area_sqm=area,
        price=_price(city, ptype, area, rent, rng),
        for_rent=rent,
        features=frozenset(_features(ptype, city, forced, rng)),
        long=long,
        priority="high" if high else "normal",
        forced=forced,
    )


def _listing_plan(rng: random.Random) -> list[tuple[str, bool]]:
    """Which listing indexes are forced positives/negatives and which are long."""
    slots = list(range(N_LISTINGS))
    picked = rng.sample(slots, N_GARDEN_HOUSES + N_BARE_STUDIOS + N_LONG_LISTINGS)
    gardens = set(picked[:N_GARDEN_HOUSES])
    studios = set(picked[N_GARDEN_HOUSES : N_GARDEN_HOUSES + N_BARE_STUDIOS])
    longs = set(picked[N_GARDEN_HOUSES + N_BARE_STUDIOS :])
    longs |= set(rng.sample(sorted(gardens), 3))  # a few long positives, too
    plan = []
    for i in slots:
        forced = "garden_house" if i in gardens else "bare_studio" if i in studios else ""
        plan.append((forced, i in longs))
    return plan


def _beds_phrase(bedrooms: int, rng: random.Random) -> str:
    forms = (
        f"{bedrooms} bedroom",
        f"{bedrooms}-bedroom",
        f"{NUMBER_WORDS[bedrooms]}-bedroom",
        f"{bedrooms}-bed",
    )
    return rng.choice(forms)


def _noun(spec: ListingSpec, rng: random.Random) -> str:
    name = spec.ptype.us_name if spec.city.american else spec.ptype.name
    if spec.ptype.key == "studio":
        return name
    return f"{_beds_phrase(spec.bedrooms, rng)} {name}"


def _hook(spec: ListingSpec, rng: random.Random) -> str:
    outdoor = "backyard" if spec.city.american else "garden"
    hooks = {
        "garden": (
            f"with a private {outdoor}",
            f"with a {rng.choice(('south', 'west'))}-facing {outdoor}",
            f"with a large {outdoor}",
        ),
        "pool": ("with a swimming pool",),
        "garage": ("with a garage", "with garage and parking"),
        "balcony": ("with a balcony", "with a sunny balcony"),
        "renovated_kitchen": ("with a renovated kitchen", "with a newly fitted kitchen"),
        "roof_terrace": ("with roof terrace access",),
    }
    for feature in HOOK_ORDER:
        if feature in spec.features and (spec.forced or rng.random() < 0.7):
            return rng.choice(hooks[feature])
    return rng.choice(
        ("close to local amenities", "in a sought-after location", "ready to move into")
    )


def _area_str(spec: ListingSpec) -> str:
    if spec.city.unit == "sq ft":
        return f"{int(round(spec.area_sqm * 10.764, -1)):,} sq ft"
    return f"{spec.area_sqm} sq m"


def _price_str(spec: ListingSpec) -> str:
    amount = f"{spec.city.symbol}{spec.price:,}"
    if not spec.for_rent:
        return amount
    return f"{amount} per month" if spec.city.american else f"{amount} pcm"


def _beds_words(spec: ListingSpec) -> str:
    word = NUMBER_WORDS[spec.bedrooms]
    return f"{word} bedroom" if spec.bedrooms == 1 else f"{word} bedrooms"


def _baths(spec: ListingSpec, rng: random.Random) -> str:
    if spec.bedrooms <= 1:
        return "a shower room"
    options = ["a family bathroom", "a bathroom with a separate WC"]
    if spec.bedrooms >= 3:
        options += ["two bathrooms", "a main bathroom plus an en-suite to the principal bedroom"]
    return rng.choice(options)


def _listing_values(spec: ListingSpec, rng: random.Random) -> dict[str, object]:
    adj = rng.choice(STUDIO_ADJECTIVES if spec.ptype.key == "studio" else ADJECTIVES)
    noun = _noun(spec, rng)
    outdoor = "backyard" if spec.city.american else "garden"
    return {
        "adj": adj,
        "Adj": _capitalise(adj),
        "noun": noun,
        "Noun": _capitalise(noun),
        "hook": _hook(spec, rng),
        "city": spec.city.name,
        "setting": rng.choice(SETTINGS),
        "price_str": _price_str(spec),
        "area_str": _area_str(spec),
        "living": rng.choice(LIVING_ROOMS),
        "kitchen": rng.choice(KITCHENS),
        "beds_words": _beds_words(spec),
        "baths": _baths(spec, rng),
        "floor": rng.choice(FLOORS),
        "building": rng.choice(BUILDINGS),
        "outdoor": outdoor,
        "aspect": rng.choice(("south", "west", "south-west", "east")),
        "garden_len": rng.randint(12, 40) if spec.city.unit == "sq m" else rng.randint(40, 120),
        "len_unit": "metres" if spec.city.unit == "sq m" else "feet",
        "reno_year": rng.randint(2019, 2025),
        "pool_len": rng.choice((8, 10, 12)),
        "station": rng.choice(STATIONS),
        "walk_min": rng.randint(3, 15),
        "cycle_min": rng.randint(8, 25),
        "epc": rng.choice("BCCDDE"),
        "lease_years": rng.choice((90, 99, 112, 125, 150, 999)),
        "symbol": spec.city.symbol,
        "hoa": rng.randint(8, 60) * 10,
        "tax": rng.randint(30, 140) * 100,
        "month": rng.choice(MONTH_NAMES),
        "furnished": rng.choice(("furnished", "unfurnished", "part-furnished")),
        "band": rng.choice("ABCDE"),
        "outdoor_or_street": outdoor if "garden" in spec.features else "street",
    }


def _headline(spec: ListingSpec, values: Mapping[str, object], rng: random.Random) -> str:
    pool = RENT_HEADLINES if spec.for_rent else SALE_HEADLINES
    return _fill(rng.choice(pool), values)


def _layout(spec: ListingSpec, values: Mapping[str, object], rng: random.Random) -> str:
    pool: tuple[str, ...]
    if spec.ptype.key == "studio":
        pool = STUDIO_LAYOUTS
    elif spec.ptype.key == "bungalow":
        pool = BUNGALOW_LAYOUTS
    else:
        pool = HOUSE_LAYOUTS if spec.ptype.is_house else FLAT_LAYOUTS
    return _fill(rng.choice(pool), values)


def _feature_sentences(
    spec: ListingSpec, values: Mapping[str, object], rng: random.Random
) -> list[str]:
    found = [_fill(rng.choice(FEATURE_SENTENCES[f]), values) for f in sorted(spec.features)]
    rng.shuffle(found)
    if spec.forced == "bare_studio":
        found.append(rng.choice(NO_OUTDOOR_SENTENCES))
    return found


def _closings(spec: ListingSpec, values: Mapping[str, object], rng: random.Random) -> list[str]:
    if spec.for_rent:
        pool = list(RENT_CLOSINGS)
    else:
        pool = list(SALE_CLOSINGS)
        pool += US_CLOSINGS if spec.city.american else [UK_TENURE[spec.ptype.is_house]]
    rng.shuffle(pool)
    return [_fill(t, values) for t in pool]


def _short_listing_text(spec: ListingSpec, values: Mapping[str, object], rng: random.Random) -> str:
    """Headline and layout, then optional sentences until a target length of 40-150 words."""
    sentences = [_headline(spec, values, rng), _layout(spec, values, rng)]
    optional = _feature_sentences(spec, values, rng)
    optional += [_fill(rng.choice(SIZE_SENTENCES), values)]
    optional += _closings(spec, values, rng)[: rng.randint(1, 3)]
    target = rng.randint(45, 135)
    for sentence in optional:
        if _words(" ".join(sentences)) >= target:
            break
        if _words(" ".join([*sentences, sentence])) <= 150:
            sentences.append(sentence)
    return " ".join(sentences)


def _long_listing_text(spec: ListingSpec, values: Mapping[str, object], rng: random.Random) -> str:
    """Five paragraphs (intro, rooms, outside, area, practical) of about 270-340 words."""
    kind = "house" if spec.ptype.is_house else spec.ptype.key
    rooms = [_fill(t, values) for t in LONG_ROOM_SENTENCES[kind]]
    area = [_fill(t, values) for t in LONG_AREA_SENTENCES]
    rng.shuffle(rooms)
    rng.shuffle(area)
    paragraphs = [
        [_headline(spec, values, rng), _fill(rng.choice(SIZE_SENTENCES), values)],
        [_layout(spec, values, rng), *rooms[:3]],
        _feature_sentences(spec, values, rng),
        area[:2],
        _closings(spec, values, rng),
    ]
    extras = [(1, r) for r in rooms[3:]] + [(3, a) for a in area[2:]]
    rng.shuffle(extras)
    target = rng.randint(280, 330)
    while _words(_join_paragraphs(paragraphs)) < target and extras:
        where, sentence = extras.pop()
        paragraphs[where].append(sentence)
    return _join_paragraphs(paragraphs)


def _join_paragraphs(paragraphs: Sequence[Sequence[str]]) -> str:
    return "\n\n".join(" ".join(p) for p in paragraphs if p)


def _listing_record(spec: ListingSpec, rng: random.Random) -> dict[str, object]:
    values = _listing_values(spec, rng)
    render = _long_listing_text if spec.long else _short_listing_text
    metadata: dict[str, object] = {
        "kind": "listing",
        "city": spec.city.name,
        "price": spec.price,
        "bedrooms": spec.bedrooms,
        "priority": spec.priority,
        "property_type": spec.ptype.key,
        "listing_type": "rent" if spec.for_rent else "sale",
        "currency": spec.city.currency,
        "floor_area_sqm": spec.area_sqm,
    }
    return {"id": spec.id, "text": render(spec, values, rng), "metadata": metadata}


def make_listings(rng: random.Random) -> tuple[list[ListingSpec], list[dict[str, object]]]:
    plan = _listing_plan(rng)
    specs = [_make_listing_spec(i + 1, f, long, rng) for i, (f, long) in enumerate(plan)]
    return specs, [_listing_record(s, rng) for s in specs]


def search_judgments(specs: Sequence[ListingSpec]) -> dict[str, object]:
    """Grade listings against SEARCH_QUERY from their attributes, not their text."""

    def grade(s: ListingSpec) -> str:
        house, garden = s.ptype.is_house, "garden" in s.features
        if house and garden and s.bedrooms == 3:
            return "relevant"
        if house and (garden or s.bedrooms == 3):
            return "partial"
        if s.ptype.key == "studio" and not s.features & OUTDOOR_FEATURES:
            return "irrelevant"
        return "unjudged"

    grades = {s.id: grade(s) for s in specs}
    by_grade = {
        g: sorted(i for i, v in grades.items() if v == g)
        for g in ("relevant", "partial", "irrelevant")
    }
    return {
        "query": SEARCH_QUERY,
        "source": "listings.jsonl",
        "grading": {
            "relevant": "house-like property, exactly 3 bedrooms, private garden/backyard",
            "partial": "house-like property with a garden but not 3 bedrooms, or a 3-bedroom "
            "house without a garden",
            "irrelevant": "studio with no private or shared outdoor space",
        },
        "forced_positive_ids": sorted(s.id for s in specs if s.forced == "garden_house"),
        "forced_negative_ids": sorted(s.id for s in specs if s.forced == "bare_studio"),
        **by_grade,
    }


# --------------------------------------------------------------------------------------
# Market and regulatory notes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoteSpec:
    id: str
    topic: Topic
    market: Market
    region: str
    year: int
    month: int
    day: int
    long: bool
    priority: str


def _quarter(month: int) -> int:
    return (month - 1) // 3 + 1


def _shift_quarter(year: int, quarter: int, delta: int) -> str:
    index = year * 4 + quarter - 1 + delta
    return f"Q{index % 4 + 1} {index // 4}"


def _direction(value: float, up: str, down: str) -> tuple[str, str]:
    return (up if value >= 0 else down), f"{abs(value):.1f}"


def _note_values(spec: NoteSpec, rng: random.Random) -> dict[str, object]:
    """All slot values for one note; per-note constants keep the numbers consistent."""
    values = _calendar_values(spec, rng)
    values.update(_finance_values(rng))
    values.update(_market_values(rng))
    values.update(_policy_values(spec, rng))
    return values


def _calendar_values(spec: NoteSpec, rng: random.Random) -> dict[str, object]:
    q = _quarter(spec.month)
    return {
        "country": spec.market.country,
        "region": spec.region,
        "symbol": spec.market.symbol,
        "year": spec.year,
        "year_next": spec.year + 1,
        "quarter": f"Q{q}",
        "quarter_prev": _shift_quarter(spec.year, q, -1),
        "quarter_next": _shift_quarter(spec.year, q, 1),
        "month_name": MONTH_NAMES[spec.month - 1],
        "months": rng.choice((6, 9, 12, 18, 24)),
    }


def _finance_values(rng: random.Random) -> dict[str, object]:
    """Policy rate, mortgage pricing and affordability rules."""
    rate = rng.choice((2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 3.75, 4.0, 4.25, 4.5, 4.75, 5.0))
    move = rng.choice((-0.5, -0.25, -0.25, 0.0, 0.25))
    return {
        "rate": f"{rate:.2f}",
        "bps": int(abs(move) * 100) or 25,
        "rate_move": "cut" if move < 0 else "raised" if move > 0 else "held",
        "infl": f"{rng.uniform(1.6, 4.2):.1f}",
        "infl_target": "2",
        "fix2": f"{rate + rng.uniform(0.3, 1.1):.2f}",
        "fix5": f"{rate + rng.uniform(0.1, 0.9):.2f}",
        "swap": f"{rate - rng.uniform(0.1, 0.6):.2f}",
        "n_cuts": NUMBER_WORDS[rng.randint(1, 4)],
        "pay_jump": rng.randint(12, 45),
        "ltv": rng.choice((60, 75, 85, 90)),
        "wage": f"{rng.uniform(2.5, 6.0):.1f}",
        "buffer": rng.choice((1, 2, 3)),
        "stress_rate": f"{rate + rng.choice((1.5, 2.0, 3.0)):.2f}",
        "lti": f"{rng.uniform(4.0, 9.5):.1f}",
        "lti_limit": rng.choice(("3.5", "4", "4.5")),
        "lti_share": rng.choice((10, 15, 20)),
        "borrow_pct": rng.randint(3, 12),
        "arrears": f"{rng.uniform(0.6, 1.8):.1f}",
        "decline_pct": rng.randint(10, 40),
        "green_bps": rng.choice((10, 15, 20, 25)),
    }


def _market_values(rng: random.Random) -> dict[str, object]:
    """Prices, sales, yields, rents, stock and construction."""
    values: dict[str, object] = {
        "share_pct": rng.randint(8, 45),
        "yield_gross": f"{rng.uniform(4.0, 7.8):.1f}",
        "yield_net": f"{rng.uniform(2.4, 4.9):.1f}",
        "yield_hurdle": f"{rng.uniform(5.5, 7.0):.1f}",
        "yield_peak": f"{rng.uniform(8, 11):.1f}",
        "yield_gap": f"{rng.uniform(1.5, 4.0):.1f}",
        "rent_growth": f"{rng.uniform(1.5, 9.0):.1f}",
        "ordinal": rng.choice(ORDINALS),
        "void_weeks": rng.randint(2, 6),
        "vacancy": f"{rng.uniform(1.0, 16.0):.1f}",
        "stock_pct": rng.randint(6, 35),
        "days_on_market": rng.randint(18, 95),
        "dom_dir": rng.choice(("longer", "shorter")),
        "discount": f"{rng.uniform(1.5, 9.0):.1f}",
        "premium_pct": rng.randint(3, 14),
        "cost_infl": f"{rng.uniform(1.5, 6.0):.1f}",
        "completions": rng.randint(30, 400) * 100,
        "starts_pct": rng.randint(4, 30),
        "margin": rng.randint(8, 17),
        "conv_cost": rng.randint(18, 30) * 100,
        "new_cost": rng.randint(28, 42) * 100,
        "premium_rise": rng.randint(6, 35),
        "units": rng.randint(12, 240) * 100,
    }
    values["price_dir"], values["price_pct_abs"] = _direction(
        rng.uniform(-4.5, 7.5), "rose", "fell"
    )
    values["sales_dir"], values["sales_pct_abs"] = _direction(
        rng.uniform(-12, 15), "higher", "lower"
    )
    return values


def _policy_values(spec: NoteSpec, rng: random.Random) -> dict[str, object]:
    """Planning, energy, letting and tax rules."""
    return {
        "density": rng.choice((80, 120, 150, 200, 250)),
        "storeys": rng.choice((6, 8, 10, 12)),
        "consult_weeks": rng.choice((6, 8, 10, 12)),
        "n_sites": rng.randint(20, 140),
        "epc_min": rng.choice("CCD"),
        "epc_year": spec.year + rng.randint(2, 5),
        "retrofit_cap": rng.choice((10000, 12500, 15000)),
        "retrofit_cost": rng.randint(40, 160) * 100,
        "fine": rng.choice((5000, 15000, 30000, 60000)),
        "nights": rng.choice((60, 90, 120)),
        "licence_years": rng.choice((3, 5)),
        "rent_cap": rng.choice((2, 3, 4, 5)),
        "notice_months": rng.choice((2, 3)),
        "exempt_years": rng.choice((10, 15, 20)),
        "threshold": rng.choice((200, 250, 300)) * 1000,
        "threshold_top": rng.choice((925, 1000, 1500)) * 1000,
        "tax_rate": rng.choice((10, 12, 15)),
        "surcharge": rng.choice((3, 5, 6)),
        "revenue": rng.randint(80, 900),
        "tax_bill": rng.randint(15, 120) * 100,
        "nonres": rng.choice((2, 3)),
        "build_cutoff": rng.choice((2009, 2012)),
    }


def _region_values(base: Mapping[str, object], sub: str, rng: random.Random) -> dict[str, object]:
    r_price = rng.uniform(-5.0, 8.0)
    values = dict(base, sub=sub, Sub=_capitalise(sub))
    values["r_dir"], values["r_price_abs"] = _direction(r_price, "rose", "fell")
    r_yield = rng.uniform(3.8, 8.2)
    r_rent = rng.uniform(0.5, 9.5)
    values.update(
        # Topic sentences quote yields and rent growth "in {sub}": use the area's figures.
        yield_gross=f"{r_yield:.1f}",
        yield_net=f"{r_yield - rng.uniform(1.2, 2.2):.1f}",
        r_yield=f"{r_yield:.1f}",
        r_days=rng.randint(15, 110),
        r_rent=f"{r_rent:.1f}",
        rent_growth=f"{r_rent:.1f}",
        r_stock=rng.randint(3, 40),
        r_vacancy=f"{rng.uniform(0.8, 4.5):.1f}",
        r_lti=f"{rng.uniform(4.0, 10.5):.1f}",
    )
    return values


def _metric_base(metric: Metric, market: Market) -> float:
    scale = {"price": market.price_base, "rent": market.rent_base, "sqm": market.sqm_base}
    return float(scale.get(metric.kind, 1))


def _format_metric(metric: Metric, market: Market, value: float) -> str:
    if metric.kind == "price":
        return f"{market.symbol}{round(value, -3):,.0f}"
    if metric.kind == "rent":
        return f"{market.symbol}{round(value, -1):,.0f} a month"
    if metric.kind == "sqm":
        return f"{market.symbol}{round(value, -1):,.0f}"
    if metric.kind == "days":
        return f"{value:.0f} days"
    return f"{value:.1f}%" if metric.kind == "pct" else f"{value:,.0f}"


def _format_change(metric: Metric, value: float, prev: float) -> str:
    if metric.kind == "pct":
        return f"{abs(value - prev):.1f} percentage points"
    return f"{abs(value / prev - 1) * 100:.1f}%"


@dataclass(frozen=True, slots=True)
class _Fact:
    """One figure for one metric in one area: this quarter and the same quarter last year."""

    metric: Metric
    value: float
    prev: float
    gap: float  # difference from the national figure, in % or percentage points

    def slots(self, market: Market) -> dict[str, object]:
        up = self.value >= self.prev
        gap_unit = " percentage points" if self.metric.kind == "pct" else "%"
        return {
            "metric": self.metric.name,
            "Metric": _capitalise(self.metric.name),
            "value": _format_metric(self.metric, market, self.value),
            "prev": _format_metric(self.metric, market, self.prev),
            "change": _format_change(self.metric, self.value, self.prev),
            "rose_fell": "rose" if up else "fell",
            "higher_lower": "higher" if up else "lower",
            "gap": f"{abs(self.gap):.1f}{gap_unit}",
            "above_below": "above" if self.gap >= 0 else "below",
        }


def _draw_fact(metric: Metric, market: Market, rng: random.Random) -> _Fact:
    value = rng.uniform(metric.low, metric.high) * _metric_base(metric, market)
    change = rng.choice((-1, 1)) * rng.uniform(0.005, 0.14)
    return _Fact(metric, value, value / (1 + change), rng.choice((-1, 1)) * rng.uniform(2, 18))


class _NoteWriter:
    """Writes the paragraphs of one note from templates, without repeating a sentence.

    Values are drawn once per note and once per sub-region, so every mention of an area
    quotes the same figures. Topic and section templates come from decks that are not
    reshuffled: when a pool runs dry, a data sentence (a random metric for a random area,
    always new wording and numbers) takes the template's place.
    """

    def __init__(self, spec: NoteSpec, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng
        self.values = _note_values(spec, rng)
        self._regions: dict[str, dict[str, object]] = {}
        self._decks: dict[str, _Deck] = {}
        self._facts: dict[tuple[str, str], _Fact] = {}
        self._told: set[tuple[str, str]] = set()  # (area, metric or segment) already used
        self.tables = 0

    def _deck(self, name: str) -> _Deck:
        if name not in self._decks:
            if name == "topic":
                pool = self.spec.topic.sentences
            elif name == "data":
                pool = DATA_SENTENCES
            elif name.startswith("region:"):
                pool = REGION_SENTENCES
            else:
                pool = GENERIC_SECTION_SENTENCES[name]
            self._decks[name] = _Deck(pool, self.rng)
        return self._decks[name]

    def local_values(self, sub: str | None = None) -> dict[str, object]:
        chosen = sub or self.rng.choice(self.spec.market.regions)
        if chosen not in self._regions:
            self._regions[chosen] = _region_values(self.values, chosen, self.rng)
        return self._regions[chosen]

    def fact(self, sub: str, metric: Metric) -> _Fact:
        key = (sub, metric.name)
        if key not in self._facts:
            self._facts[key] = _draw_fact(metric, self.spec.market, self.rng)
        return self._facts[key]

    def data_sentence(self, sub: str) -> str:
        """States a figure not yet quoted for ``sub``; commentary once all are used."""
        unused = [m for m in METRICS if (sub, m.name) not in self._told]
        if not unused:
            return self.commentary(sub)
        metric = self.rng.choice(unused)
        self._told.add((sub, metric.name))
        values = dict(self.local_values(sub))
        values.update(self.fact(sub, metric).slots(self.spec.market))
        values.update(
            period=f"{values['quarter']} {values['year']}",
            period_prev=f"{values['quarter']} {self.spec.year - 1}",
        )
        return _fill(self._deck("data").draw(), values)

    def commentary(self, sub: str) -> str:
        """A qualitative remark about a property segment in ``sub``, never repeated."""
        segment = self._fresh_choice(sub, SEGMENTS)
        trend = self._fresh_choice(sub, TRENDS)
        values = dict(
            self.local_values(sub),
            segment=segment,
            Segment=_capitalise(segment),
            trend=trend,
            reason=self.rng.choice(REASONS),
        )
        return _fill(self.rng.choice(COMMENTARY_SENTENCES), values)

    def _fresh_choice(self, sub: str, options: Sequence[str]) -> str:
        """An option not yet used for ``sub``, or any option once all have been."""
        unused = [o for o in options if (sub, o) not in self._told]
        choice = self.rng.choice(unused or list(options))
        self._told.add((sub, choice))
        return choice

    def sentence(self, pool: str, sub: str | None = None) -> str:
        deck = self._deck(pool)
        if not deck.fresh:
            return self.commentary(sub or self.rng.choice(self.spec.market.regions))
        return _fill(deck.draw(), self.local_values(sub))

    def paragraph(self, pool: str, n: int) -> str:
        return " ".join(self.sentence(pool) for _ in range(n))

    def findings_paragraph(self) -> str:
        sub = self.rng.choice(self.spec.market.regions)
        rest = [self.data_sentence(sub) for _ in range(self.rng.randint(1, 2))]
        rest += [self.commentary(sub) for _ in range(self.rng.randint(1, 2))]
        self.rng.shuffle(rest)
        return " ".join([self.sentence("topic", sub), *rest])

    def bullets(self, n: int) -> str:
        return "\n".join(f"- {self.sentence('topic')}" for _ in range(n))

    def region_paragraph(self, sub: str) -> str:
        sentences = [self.sentence(f"region:{sub}", sub), self.data_sentence(sub)]
        sentences += [self.commentary(sub) for _ in range(self.rng.randint(0, 2))]
        self.rng.shuffle(sentences)
        return " ".join(sentences)

    def region_table(self) -> str:
        self.tables += 1
        rows = [
            f"Table {self.tables}: summary by area, {self.values['quarter']} {self.values['year']}",
            "",
            "| Area | Price change (%) | Gross yield (%) | Days on market |",
            "|---|---|---|---|",
        ]
        for sub in self.spec.market.regions:
            v = self.local_values(sub)
            sign = "" if v["r_dir"] == "rose" else "-"
            rows.append(f"| {sub} | {sign}{v['r_price_abs']} | {v['r_yield']} | {v['r_days']} |")
        return "\n".join(rows)

    def metric_table(self) -> str:
        """A quarterly series of one metric for every area, ending at the quoted figures."""
        self.tables += 1
        metric = self.rng.choice(METRICS)
        regions = self.spec.market.regions
        quarter = int(str(self.values["quarter"])[1])
        periods = [_shift_quarter(self.spec.year, quarter, d) for d in range(-5, 1)]
        series = [self._series(self.fact(sub, metric)) for sub in regions]
        rows = [
            f"Table {self.tables}: {metric.name} by quarter and area",
            "",
            "| Quarter | " + " | ".join(regions) + " |",
            "|---" * (len(regions) + 1) + "|",
        ]
        for i, period in enumerate(periods):
            cells = [_format_metric(metric, self.spec.market, s[i]) for s in series]
            rows.append(f"| {period} | " + " | ".join(cells) + " |")
        return "\n".join(rows)

    def _series(self, fact: _Fact) -> list[float]:
        """Six quarters: one before last year's figure, then a noisy path to this one."""
        path = [fact.prev + (fact.value - fact.prev) * k / 4 for k in range(5)]
        noisy = [x * (1 + self.rng.uniform(-0.01, 0.01)) for x in path[1:4]]
        first = fact.prev * (1 + self.rng.uniform(-0.03, 0.03))
        return [first, fact.prev, *noisy, fact.value]


def _title(writer: _NoteWriter) -> str:
    values = writer.local_values(writer.spec.region)
    return _capitalise(_fill(writer.rng.choice(writer.spec.topic.titles), values))


def _dateline(spec: NoteSpec) -> str:
    label = "Market analysis" if spec.topic.kind == "market_analysis" else "Regulatory note"
    country = _capitalise(spec.market.country)
    return f"{label} | {country} | {spec.year}-{spec.month:02d}-{spec.day:02d}"


def _short_note_text(writer: _NoteWriter) -> str:
    """A brief: title, dateline and 2-5 paragraphs (roughly 80-450 words)."""
    rng = writer.rng
    parts = [_title(writer), _dateline(writer.spec), writer.paragraph("topic", rng.randint(2, 4))]
    for _ in range(rng.randint(1, 4)):
        pool = rng.choice(("topic", "findings", "Background", "Outlook", "Risks to the outlook"))
        if pool == "findings":
            parts.append(writer.findings_paragraph())
        else:
            parts.append(writer.paragraph(pool, rng.randint(2, 4)))
    return "\n\n".join(parts)


@dataclass(slots=True)
class _Report:
    """The sections of a long note while it grows; rendered once at the end."""

    sections: dict[str, list[str]]
    regions: dict[str, list[str]]

    def words(self) -> int:
        paragraphs = [*self.sections.values(), *self.regions.values()]
        return sum(_words(p) for ps in paragraphs for p in ps)

    def render(self, title: str, dateline: str) -> str:
        parts = [f"# {title}", dateline]
        for heading in LONG_NOTE_SECTIONS:
            parts += [f"## {heading}", *self.sections[heading]]
            if heading == "Regional breakdown":
                for sub, paragraphs in self.regions.items():
                    parts += [f"### {_capitalise(sub)}", *paragraphs]
        return "\n\n".join(parts)


def _initial_report(writer: _NoteWriter) -> _Report:
    rng = writer.rng
    sections = {
        h: [writer.paragraph(h, rng.randint(3, 5))]
        for h in LONG_NOTE_SECTIONS
        if h in GENERIC_SECTION_SENTENCES
    }
    sections["Executive summary"] = [writer.paragraph("topic", rng.randint(3, 4))]
    sections["Key findings"] = [writer.findings_paragraph(), writer.bullets(rng.randint(4, 6))]
    sections["Regional breakdown"] = [writer.region_table()]
    sections["Data appendix"] = [writer.metric_table()]
    regions = {sub: [writer.region_paragraph(sub)] for sub in writer.spec.market.regions}
    return _Report(sections, regions)


def _grow(report: _Report, writer: _NoteWriter, turn: int) -> None:
    """Adds one paragraph or table: findings, then two area paragraphs, then a table."""
    regions = writer.spec.market.regions
    step = turn % 4
    if step in (1, 2):
        sub = regions[(turn // 2) % len(regions)]
        report.regions[sub].append(writer.region_paragraph(sub))
    elif step == 3 and writer.tables <= MAX_APPENDIX_TABLES:
        report.sections["Data appendix"].append(writer.metric_table())
    else:
        report.sections["Key findings"].append(writer.findings_paragraph())


def _long_note_text(writer: _NoteWriter, target_words: int) -> str:
    """A multi-section report grown paragraph by paragraph to about ``target_words``."""
    report = _initial_report(writer)
    turn = 0
    while report.words() < target_words:
        _grow(report, writer, turn)
        turn += 1
    return report.render(_title(writer), _dateline(writer.spec))


def _make_note_spec(index: int, long: bool, rng: random.Random) -> NoteSpec:
    topic = TOPICS[(index - 1) % len(TOPICS)] if index <= len(TOPICS) else rng.choice(TOPICS)
    market = rng.choice(MARKETS)
    regulatory = topic.kind == "regulatory_note"
    return NoteSpec(
        id=f"note-{index:03d}",
        topic=topic,
        market=market,
        region=rng.choice(market.regions),
        year=rng.choice((2024, 2025, 2025, 2026)),
        month=rng.randint(1, 12),
        day=rng.randint(1, 28),
        long=long,
        priority="high" if rng.random() < (0.35 if regulatory else 0.12) else "normal",
    )


def _note_record(spec: NoteSpec, rng: random.Random) -> dict[str, str]:
    writer = _NoteWriter(spec, rng)
    text = (
        _long_note_text(writer, rng.randint(1550, 3700)) if spec.long else _short_note_text(writer)
    )
    metadata = {
        "kind": spec.topic.kind,
        "topic": spec.topic.key,
        "market": spec.market.country.removeprefix("the "),
        "region": spec.region,
        "published": f"{spec.year}-{spec.month:02d}-{spec.day:02d}",
        "format": "report" if spec.long else "brief",
        "priority": spec.priority,
    }
    return {"id": spec.id, "text": text, "metadata": json.dumps(metadata, ensure_ascii=False)}


def make_notes(rng: random.Random) -> list[dict[str, str]]:
    longs = set(rng.sample(range(1, N_NOTES + 1), N_LONG_NOTES))
    specs = [_make_note_spec(i, i in longs, rng) for i in range(1, N_NOTES + 1)]
    return [_note_record(s, rng) for s in specs]


# --------------------------------------------------------------------------------------
# Writing and reporting
# --------------------------------------------------------------------------------------


def _write_jsonl(path: Path, records: Sequence[Mapping[str, object]]) -> None:
    lines = (json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_parquet(path: Path, records: Sequence[Mapping[str, str]]) -> None:
    try:  # imported by name: pyarrow is optional here and ships no type information
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:  # pyarrow is optional for everything but this file
        raise SystemExit(
            f"pyarrow is needed to write {path}; install it with "
            "`pip install pyarrow` and run again"
        ) from exc
    columns = {
        name: pa.array([r[name] for r in records], pa.string())
        for name in ("id", "text", "metadata")
    }
    pq.write_table(pa.table(columns), path, compression="zstd")


def _write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _malformed_expected() -> list[dict[str, object]]:
    expected = []
    for line_no, case in enumerate(MALFORMED_CASES, start=1):
        try:
            parsed = json.loads(case.raw)
            doc_id = parsed.get("id") if isinstance(parsed, dict) else None
        except json.JSONDecodeError:
            doc_id = None
        expected.append(
            {
                "line": line_no,
                "id": doc_id,
                "case": case.case,
                "outcome": case.outcome,
                "reason": case.reason,
            }
        )
    return expected


def _summary(name: str, texts: Sequence[str]) -> str:
    counts = sorted(_words(t) for t in texts)
    return (
        f"{name}: {len(counts)} records, words min/median/max = "
        f"{counts[0]}/{int(statistics.median(counts))}/{counts[-1]}"
    )


def generate(out: Path, seed: int = SEED) -> list[str]:
    """Write every sample file under ``out``; returns one summary line per file."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    specs, listings = make_listings(rng)
    notes = make_notes(rng)
    _write_jsonl(out / "listings.jsonl", listings)
    _write_parquet(out / "market_notes.parquet", notes)
    (out / "malformed.jsonl").write_text(
        "\n".join(c.raw for c in MALFORMED_CASES) + "\n", encoding="utf-8"
    )
    _write_json(out / "malformed_expected.json", _malformed_expected())
    _write_json(out / "search_judgments.json", search_judgments(specs))
    return [
        _summary("listings.jsonl", [str(r["text"]) for r in listings]),
        _summary("market_notes.parquet", [r["text"] for r in notes]),
        f"malformed.jsonl: {len(MALFORMED_CASES)} lines",
    ]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "data",
        help="directory to write the files into (default: examples/data)",
    )
    parser.add_argument("--seed", type=int, default=SEED, help="random seed (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    for line in generate(args.out, args.seed):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
