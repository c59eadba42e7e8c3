"""Routing policy: which tier and model version embeds each document.

Order of decisions: declared rules (a metadata field forces a tier), then the value score
against the threshold, then the budget plan (a document above the threshold that the plan
does not admit goes to the local tier). With a budget and the shipped classifier there is no
threshold (``RoutingPolicy.budget_decides``): every document wants the API tier and the plan
admits the best value per dollar until the budget is spent, so a budget is never left unused.
In coverage mode every document also gets the local vector. The model version inside a tier
comes from the stable A/B split of the live versions (the version registry's weights when
there is one, see ``tiering.versions``).

Shadow versions get a stable sample of the documents their tier embeds, as extra targets
(``RouteDecision.shadow_targets``) beside the live one; they never replace it. A backfill
policy (``RoutingPolicy.backfill``) sends every document to one version only; what its
budget does not admit is deferred to the next backfill run, never sent to another version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tiering.ab import assign_version, stable_unit
from tiering.budget import BudgetPlan, PriorityKey
from tiering.documents import Document, Tier
from tiering.errors import ConfigError
from tiering.settings import TierembedSettings
from tiering.versions import Registry, VersionState

__all__ = ["Rule", "Shadow", "RoutingPolicy", "RouteDecision", "decide_route", "wanted_tier",
           "policy_from_settings", "in_shadow_sample", "api_version_for", "wants_api"]


@dataclass(frozen=True, slots=True)
class Rule:
    field: str
    equals: str | int | float | bool
    tier: Tier

    def matches(self, metadata: dict[str, object]) -> bool:
        return self.field in metadata and metadata[self.field] == self.equals


@dataclass(frozen=True, slots=True)
class Shadow:
    """A shadow version: it also embeds ``sample`` of the documents its tier embeds."""

    tier: Tier
    version: str
    sample: float


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    mode: str  # "exclusive" | "coverage"
    api_threshold: float
    rules: tuple[Rule, ...]
    local_versions: tuple[tuple[str, float], ...]
    api_versions: tuple[tuple[str, float], ...]
    budget_decides: bool = False
    """A budget with the shipped classifier: every document wants the API tier and the budget
    plan admits the best value per dollar until the budget is spent (no threshold)."""
    shadows: tuple[Shadow, ...] = ()
    backfill: tuple[Tier, str] | None = None
    """Backfill mode: every document goes to this (tier, version) only."""


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """``targets`` is one (tier, version) pair, or two in coverage mode; none for a
    backfill target the budget deferred. ``shadow_targets``: shadow versions that also
    embed this document (never served)."""

    targets: tuple[tuple[Tier, str], ...]
    reason: str
    wanted_api: bool
    over_budget: bool
    shadow_targets: tuple[tuple[Tier, str], ...] = ()
    deferred: bool = False


def policy_from_settings(settings: TierembedSettings, registry: Registry | None = None,
                         backfill: str | None = None) -> RoutingPolicy:
    """The routing policy of the settings tree; with the version ``registry``, its live
    versions' weights and its shadow versions; with ``backfill``, that version only."""
    r = settings.routing
    local = tuple((m.version, m.traffic_weight) for m in settings.local.models)
    api = tuple((m.version, m.traffic_weight) for m in settings.api.models)
    shadows: tuple[Shadow, ...] = ()
    if registry is not None:
        local, api = registry.traffic(Tier.LOCAL) or local, registry.traffic(Tier.API) or api
        shadows = tuple(Shadow(e.tier, e.version, e.shadow_sample)
                        for e in registry.in_state(VersionState.SHADOW))
    return RoutingPolicy(
        mode=r.mode,
        api_threshold=r.api_threshold,
        rules=tuple(Rule(x.field, x.equals, Tier(x.tier)) for x in r.rules),
        local_versions=local,
        api_versions=api,
        shadows=shadows,
        backfill=None if backfill is None else (_tier_of(settings, backfill), backfill),
    )


def _tier_of(settings: TierembedSettings, version: str) -> Tier:
    if version in {m.version for m in settings.local.models}:
        return Tier.LOCAL
    if version in {m.version for m in settings.api.models}:
        return Tier.API
    raise ConfigError(f"cannot backfill {version!r}: no such version in local.models or api.models")


def api_version_for(doc_id: str, policy: RoutingPolicy) -> str | None:
    """The API version ``doc_id`` is charged to when it goes to the paid tier (None: it
    cannot, as in a backfill of a local version)."""
    if policy.backfill is not None:
        tier, version = policy.backfill
        return version if tier is Tier.API else None
    return _version(doc_id, Tier.API, policy)


def wants_api(doc: Document, score: float, policy: RoutingPolicy) -> bool:
    """Whether ``doc`` asks for the paid tier (and so enters the budget plan)."""
    if policy.backfill is not None:
        return policy.backfill[0] is Tier.API
    return wanted_tier(doc, score, policy)[0] is Tier.API


def in_shadow_sample(doc_id: str, shadow: Shadow) -> bool:
    """Stable: the same documents stay in a shadow's sample from run to run."""
    return stable_unit(doc_id, f"shadow-{shadow.version}") < shadow.sample


def _version(doc_id: str, tier: Tier, policy: RoutingPolicy) -> str:
    versions: Sequence[tuple[str, float]] = (
        policy.api_versions if tier is Tier.API else policy.local_versions
    )
    return assign_version(doc_id, versions, salt=f"ab-{tier.value}")


def wanted_tier(doc: Document, score: float, policy: RoutingPolicy) -> tuple[Tier, str]:
    if policy.rules:
        metadata = doc.metadata_dict()
        for rule in policy.rules:
            if rule.matches(metadata):
                return rule.tier, f"rule {rule.field}={rule.equals!r}"
    if policy.budget_decides:
        return Tier.API, f"score {score:.3f}; the budget plan decides (value per dollar)"
    if score >= policy.api_threshold:
        return Tier.API, f"score {score:.3f} >= threshold {policy.api_threshold:.2f}"
    return Tier.LOCAL, f"score {score:.3f} < threshold {policy.api_threshold:.2f}"


def decide_route(
    doc: Document,
    score: float,
    key: PriorityKey,
    policy: RoutingPolicy,
    plan: BudgetPlan,
    unchanged: frozenset[str] = frozenset(),
) -> RouteDecision:
    """Route one document; pure, so the same inputs always give the same decision.

    ``unchanged`` names the model versions that already hold this document's current text:
    keeping such a target costs nothing, so the budget does not move it to another tier.
    """
    if policy.backfill is not None:
        return _backfill_route(doc, key, policy.backfill, plan, unchanged)
    tier, reason = wanted_tier(doc, score, policy)
    wanted_api = tier is Tier.API
    free = wanted_api and _version(doc.id, Tier.API, policy) in unchanged
    over_budget = wanted_api and not free and not plan.admits(key)
    if over_budget:
        tier, reason = Tier.LOCAL, reason + "; over budget -> local"
    targets: list[tuple[Tier, str]] = []
    if policy.mode == "coverage" and tier is Tier.API:
        targets.append((Tier.LOCAL, _version(doc.id, Tier.LOCAL, policy)))
    targets.append((tier, _version(doc.id, tier, policy)))
    shadows = tuple((sh.tier, sh.version) for sh in policy.shadows
                    if any(t is sh.tier for t, _ in targets) and in_shadow_sample(doc.id, sh))
    return RouteDecision(tuple(targets), reason, wanted_api, over_budget, shadows)


def _backfill_route(doc: Document, key: PriorityKey, target: tuple[Tier, str], plan: BudgetPlan,
                    unchanged: frozenset[str]) -> RouteDecision:
    tier, version = target
    reason = f"backfill {version}"
    if tier is Tier.API and version not in unchanged and not plan.admits(key):
        return RouteDecision((), reason + ": over budget, deferred to the next backfill run",
                             True, True, deferred=True)
    return RouteDecision((target,), reason, tier is Tier.API, False)
