"""What-if routing policies for ``tierembed eval``: which documents would hold which
version under all-local, all-premium and tiered routing at a budget.

Tiered selection is the pipeline's own: scores from the value classifier, rank-normalised
within the corpus when the pipeline would do so (:func:`tiering.normalization.rank_normalize`),
then the budget planner (:class:`tiering.budget.PlanAccumulator`) admits the best value per
estimated dollar while the estimate fits ``share`` of the all-premium estimate. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tiering.budget import PlanAccumulator, PlanItem, priority_key
from tiering.evaluation import Policy
from tiering.fusion import FusionMethod

__all__ = ["PolicyInputs", "premium_selection", "what_if_policies"]

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class PolicyInputs:
    """Per document (in corpus order): its id, router score and estimated premium cost."""

    doc_ids: tuple[str, ...]
    scores: tuple[float, ...]
    premium_cost_usd: tuple[float, ...]
    local: str
    premium: str
    threshold: float | None = None
    """With a trained router and a budget, documents below it never want the premium tier."""


def premium_selection(inputs: PolicyInputs, budget_usd: float) -> BoolArray:
    """Documents the budget planner would admit to the premium tier."""
    acc = PlanAccumulator(budget_usd)
    keys = []
    for doc_id, score, cost in zip(inputs.doc_ids, inputs.scores, inputs.premium_cost_usd, strict=True):
        key = priority_key(doc_id, score, cost)
        keys.append(key)
        if inputs.threshold is None or score >= inputs.threshold:
            acc.add(PlanItem(key, cost))
    plan = acc.plan()
    wants = [inputs.threshold is None or s >= inputs.threshold for s in inputs.scores]
    return np.asarray([w and plan.admits(k) for w, k in zip(wants, keys, strict=True)], dtype=bool)


def what_if_policies(
    inputs: PolicyInputs, shares: Sequence[float], methods: Sequence[FusionMethod]
) -> list[Policy]:
    """all-local, all-premium, and tiered coverage / exclusive at each budget share of the
    all-premium estimate, under each fusion method (one-version policies need no fusion)."""
    n = len(inputs.doc_ids)
    every, none = np.ones(n, bool), np.zeros(n, bool)
    total = float(sum(inputs.premium_cost_usd))
    costs = np.asarray(inputs.premium_cost_usd)
    out = [
        Policy("all-local", {inputs.local: every, inputs.premium: none}, FusionMethod.ZSCORE, 0.0),
        Policy("all-premium", {inputs.local: none, inputs.premium: every}, FusionMethod.ZSCORE, total),
    ]
    for share in shares:
        chosen = premium_selection(inputs, share * total)
        cost = float(costs[chosen].sum())
        for method in methods:
            out.append(Policy(f"coverage @{share:.0%}, {method.value}", {inputs.local: every,
                              inputs.premium: chosen}, method, cost,
                              note=f"{int(chosen.sum())} premium docs"))
            out.append(Policy(f"exclusive @{share:.0%}, {method.value}", {inputs.local: ~chosen,
                              inputs.premium: chosen}, method, cost,
                              note=f"{int(chosen.sum())} premium docs"))
    return out
