"""Routing policy: which tier and model version embeds each document.

Order of decisions: declared rules (a metadata field forces a tier), then the value score
against the threshold, then the budget plan (a document above the threshold that the plan
does not admit goes to the local tier). With a budget and the shipped classifier there is no
threshold (``RoutingPolicy.budget_decides``): every document wants the API tier and the plan
admits the best value per dollar until the budget is spent, so a budget is never left unused.
In coverage mode every document also gets the local
vector. The model version inside a tier comes from the stable A/B split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tiering.ab import assign_version
from tiering.budget import BudgetPlan, PriorityKey
from tiering.documents import Document, Tier
from tiering.settings import TierembedSettings

__all__ = ["Rule", "RoutingPolicy", "RouteDecision", "decide_route", "wanted_tier",
           "policy_from_settings"]


@dataclass(frozen=True, slots=True)
class Rule:
    field: str
    equals: str | int | float | bool
    tier: Tier

    def matches(self, metadata: dict[str, object]) -> bool:
        return self.field in metadata and metadata[self.field] == self.equals


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


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """``targets`` is one (tier, version) pair, or two in coverage mode."""

    targets: tuple[tuple[Tier, str], ...]
    reason: str
    wanted_api: bool
    over_budget: bool


def policy_from_settings(settings: TierembedSettings) -> RoutingPolicy:
    """The routing policy described by the settings tree."""
    r = settings.routing
    return RoutingPolicy(
        mode=r.mode,
        api_threshold=r.api_threshold,
        rules=tuple(Rule(x.field, x.equals, Tier(x.tier)) for x in r.rules),
        local_versions=tuple((m.version, m.traffic_weight) for m in settings.local.models),
        api_versions=tuple((m.version, m.traffic_weight) for m in settings.api.models),
    )


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
    return RouteDecision(tuple(targets), reason, wanted_api, over_budget)
