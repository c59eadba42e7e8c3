"""Lifecycle rules of model versions (pure): seeding, promote, shadow, retire."""

from __future__ import annotations

import pytest

from tiering.documents import Tier
from tiering.versions import (
    ConfiguredVersion,
    Registry,
    VersionError,
    VersionState,
    promote,
    reconcile_configured,
    retire,
    shadow,
)

AT = "2026-12-05 10:00:00Z"
CONFIG = [ConfiguredVersion("mini", Tier.LOCAL, 1.0), ConfiguredVersion("mini-b", Tier.LOCAL, 0.0),
          ConfiguredVersion("te3", Tier.API, 0.5), ConfiguredVersion("te3-large", Tier.API, 0.5)]


def _seeded() -> Registry:
    return reconcile_configured(Registry(), CONFIG, by="ops", at=AT)


def test_an_empty_registry_is_seeded_as_the_settings_say() -> None:
    reg = _seeded()
    assert reg.traffic(Tier.LOCAL) == (("mini", 1.0),)
    assert reg.traffic(Tier.API) == (("te3", 0.5), ("te3-large", 0.5))
    assert reg.require("mini-b").state is VersionState.CANDIDATE
    assert set(reg.served()) == {"mini", "te3", "te3-large"}


def test_after_seeding_a_newly_configured_version_is_only_a_candidate() -> None:
    reg = reconcile_configured(_seeded(), [*CONFIG, ConfiguredVersion("new", Tier.LOCAL, 1.0)],
                               by="ops", at=AT)
    assert reg.require("new").state is VersionState.CANDIDATE
    assert reg.traffic(Tier.LOCAL) == (("mini", 1.0),)


def test_a_live_version_missing_from_the_settings_is_an_error_naming_the_fix() -> None:
    with pytest.raises(VersionError, match="te3-large.*retire"):
        reconcile_configured(_seeded(), CONFIG[:3], by="ops", at=AT)


def test_promote_with_a_share_scales_the_others_and_share_one_keeps_them_serving() -> None:
    half = promote(_seeded(), "mini-b", share=0.25, by="ops", at=AT)
    assert dict(half.traffic(Tier.LOCAL)) == {"mini": 0.75, "mini-b": 0.25}
    full = promote(_seeded(), "mini-b", share=1.0, by="ops", at=AT)
    assert full.traffic(Tier.LOCAL) == (("mini-b", 1.0),)
    assert full.require("mini").state is VersionState.LIVE and "mini" in full.served()
    assert full.require("mini-b").changed_by == "ops"


def test_shadow_is_never_served_and_gets_its_sample() -> None:
    reg = shadow(_seeded(), "mini-b", sample=0.05, by="ops", at=AT)
    entry = reg.require("mini-b")
    assert entry.state is VersionState.SHADOW and entry.shadow_sample == 0.05
    assert "mini-b" not in reg.served() and reg.traffic(Tier.LOCAL) == (("mini", 1.0),)


def test_retiring_a_live_version_hands_its_traffic_to_the_rest_of_its_tier() -> None:
    reg = retire(_seeded(), "te3", by="ops", at=AT)
    assert reg.traffic(Tier.API) == (("te3-large", 1.0),)
    assert reg.require("te3").state is VersionState.RETIRED and "te3" not in reg.served()


def test_the_last_version_receiving_documents_cannot_leave_traffic() -> None:
    with pytest.raises(VersionError, match="only local version"):
        retire(_seeded(), "mini", by="ops", at=AT)
    with pytest.raises(VersionError, match="only local version"):
        shadow(_seeded(), "mini", sample=0.1, by="ops", at=AT)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_shares_and_samples_are_bounded(bad: float) -> None:
    with pytest.raises(VersionError):
        promote(_seeded(), "mini-b", share=bad, by="ops", at=AT)
    with pytest.raises(VersionError):
        shadow(_seeded(), "mini-b", sample=bad, by="ops", at=AT)


def test_unknown_versions_are_named() -> None:
    with pytest.raises(VersionError, match="'nope' is not in the registry"):
        promote(_seeded(), "nope", share=1.0, by="ops", at=AT)
