"""Model versions as a lifecycle: candidate -> shadow -> live -> retired, and back.

Pure logic (no I/O, no clock): each change takes a :class:`Registry` and returns a new one;
``store.registry`` persists them with their history, and the flows turn a registry into the
run's routing policy and search's versions.

States:

- ``candidate``: configured, not in traffic; nothing is embedded with it, search ignores it.
- ``shadow``: embeds a stable sample (``shadow_sample``) of its tier's documents *beside*
  the live version that serves them; never served by search. Measure it with
  ``tierembed models compare`` on the documents both embedded, then promote or retire it.
- ``live``: served by search; ``traffic_weight`` is its share of its tier's new documents in
  the stable A/B split. A live version with weight 0 still serves what it embedded (for
  example the old version while a backfill re-embeds the corpus), but receives nothing new.
- ``retired``: neither embedded nor served; its vectors stay in the store until
  ``tierembed prune SOURCE --include-retired``.

Invariant: every tier with a live version keeps at least one live version of positive
weight, so each document still has a version to go to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from tiering.documents import Tier
from tiering.errors import ConfigError

__all__ = [
    "VersionState",
    "VersionEntry",
    "Registry",
    "VersionError",
    "ConfiguredVersion",
    "reconcile_configured",
    "promote",
    "shadow",
    "retire",
]


class VersionError(ConfigError):
    """A lifecycle change that cannot be made; the message says why and what to do."""


class VersionState(StrEnum):
    CANDIDATE = "candidate"
    SHADOW = "shadow"
    LIVE = "live"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class VersionEntry:
    version: str
    tier: Tier
    state: VersionState
    traffic_weight: float = 0.0
    """Live only: share of the tier's new documents (a tier's live weights sum to 1)."""
    shadow_sample: float = 0.0
    """Shadow only: fraction of the tier's documents also embedded with this version."""
    changed_by: str = ""
    changed_at: str = ""


@dataclass(frozen=True, slots=True)
class ConfiguredVersion:
    """A version the settings declare (``local.models`` / ``api.models``)."""

    version: str
    tier: Tier
    traffic_weight: float


@dataclass(frozen=True, slots=True)
class Registry:
    entries: tuple[VersionEntry, ...] = ()

    def get(self, version: str) -> VersionEntry | None:
        return next((e for e in self.entries if e.version == version), None)

    def require(self, version: str) -> VersionEntry:
        entry = self.get(version)
        if entry is None:
            known = ", ".join(e.version for e in self.entries) or "none"
            raise VersionError(f"model version {version!r} is not in the registry (known: {known}); "
                               "add it to local.models or api.models in the settings first")
        return entry

    def in_state(self, state: VersionState, tier: Tier | None = None) -> tuple[VersionEntry, ...]:
        return tuple(e for e in self.entries if e.state is state and (tier is None or e.tier is tier))

    def traffic(self, tier: Tier) -> tuple[tuple[str, float], ...]:
        """The tier's A/B split: live versions with positive weight."""
        return tuple((e.version, e.traffic_weight) for e in self.in_state(VersionState.LIVE, tier)
                     if e.traffic_weight > 0)

    def served(self) -> tuple[str, ...]:
        """Versions search may return: the live ones."""
        return tuple(e.version for e in self.in_state(VersionState.LIVE))

    def with_entries(self, entries: Iterable[VersionEntry]) -> Registry:
        """A registry of ``entries`` in canonical order (local tier first, then by name)."""
        return Registry(tuple(sorted(entries, key=lambda e: (e.tier is not Tier.LOCAL, e.version))))


def _stamp(entry: VersionEntry, by: str, at: str, **changes: object) -> VersionEntry:
    return replace(entry, changed_by=by, changed_at=at, **changes)  # type: ignore[arg-type]


def reconcile_configured(registry: Registry, configured: Iterable[ConfiguredVersion], *, by: str,
                         at: str) -> Registry:
    """Bring the registry up to date with the settings.

    An empty registry is seeded from the settings (weight > 0: live with that weight, 0:
    candidate), so a first run behaves as the config says. After that the registry is the
    authority on states and weights; a version newly added to the settings enters as a
    ``candidate`` (promote or shadow it explicitly). A live or shadow version that the
    settings no longer declare cannot be embedded or searched: that is an error naming
    the fix.
    """
    configured = list(configured)
    declared = {c.version for c in configured}
    if not registry.entries:
        return registry.with_entries(_seed(configured, by, at))
    missing = [e for e in registry.entries
               if e.version not in declared and e.state in (VersionState.LIVE, VersionState.SHADOW)]
    if missing:
        names = ", ".join(f"{e.version} ({e.state.value})" for e in missing)
        raise VersionError(
            f"the version registry has {names} in use, but the settings no longer declare "
            f"{'it' if len(missing) == 1 else 'them'}; add it back to local.models/api.models, or "
            f"`tierembed models retire {missing[0].version}` first")
    added = [VersionEntry(c.version, c.tier, VersionState.CANDIDATE, changed_by=by, changed_at=at)
             for c in configured if registry.get(c.version) is None]
    return registry.with_entries((*registry.entries, *added)) if added else registry


def _seed(configured: list[ConfiguredVersion], by: str, at: str) -> list[VersionEntry]:
    entries = []
    for tier in Tier:
        mine = [c for c in configured if c.tier is tier]
        total = sum(c.traffic_weight for c in mine if c.traffic_weight > 0)
        for c in mine:
            if c.traffic_weight > 0:
                entries.append(VersionEntry(c.version, tier, VersionState.LIVE, c.traffic_weight / total,
                                            changed_by=by, changed_at=at))
            else:
                entries.append(VersionEntry(c.version, tier, VersionState.CANDIDATE, changed_by=by,
                                            changed_at=at))
    return entries


def promote(registry: Registry, version: str, *, share: float, by: str, at: str) -> Registry:
    """Make ``version`` live with ``share`` of its tier's new documents; the other live
    versions of the tier share the rest in their current proportions (with ``share`` 1 they
    stay live at weight 0: they keep serving what they embedded until retired)."""
    if not 0 < share <= 1:
        raise VersionError(f"--share must be in (0, 1], got {share}")
    entry = registry.require(version)
    others = [e for e in registry.in_state(VersionState.LIVE, entry.tier) if e.version != version]
    rest = sum(e.traffic_weight for e in others)
    if share < 1 and rest <= 0:
        raise VersionError(f"{version} cannot take {share:.0%} of the {entry.tier.value} tier: no other "
                           "live version has traffic to keep the rest; promote with --share 1")
    updated = {version: _stamp(entry, by, at, state=VersionState.LIVE, traffic_weight=share,
                               shadow_sample=0.0)}
    for e in others:
        weight = 0.0 if share == 1 or rest <= 0 else e.traffic_weight / rest * (1 - share)
        updated[e.version] = _stamp(e, by, at, traffic_weight=weight)
    return registry.with_entries(updated.get(e.version, e) for e in registry.entries)


def shadow(registry: Registry, version: str, *, sample: float, by: str, at: str) -> Registry:
    """Embed a stable ``sample`` of the tier's documents with ``version`` beside the live
    version; a live version moved to shadow gives its traffic to the other live ones."""
    if not 0 < sample <= 1:
        raise VersionError(f"--sample must be in (0, 1], got {sample}")
    entry = registry.require(version)
    taken = _without_traffic(registry, entry, "shadow", by, at)
    changed = _stamp(entry, by, at, state=VersionState.SHADOW, traffic_weight=0.0, shadow_sample=sample)
    return taken.with_entries(changed if e.version == version else e for e in taken.entries)


def retire(registry: Registry, version: str, *, by: str, at: str) -> Registry:
    """Stop embedding and serving ``version``; its traffic goes to the other live versions
    of its tier. Its stored vectors stay until ``tierembed prune SOURCE --include-retired``."""
    entry = registry.require(version)
    taken = _without_traffic(registry, entry, "retire", by, at)
    changed = _stamp(entry, by, at, state=VersionState.RETIRED, traffic_weight=0.0, shadow_sample=0.0)
    return taken.with_entries(changed if e.version == version else e for e in taken.entries)


def _without_traffic(registry: Registry, entry: VersionEntry, action: str, by: str, at: str) -> Registry:
    """``registry`` with ``entry``'s traffic handed to the tier's other live versions."""
    if entry.state is not VersionState.LIVE:
        return registry
    others = [e for e in registry.in_state(VersionState.LIVE, entry.tier) if e.version != entry.version]
    rest = sum(e.traffic_weight for e in others)
    if entry.traffic_weight > 0 and rest <= 0:
        raise VersionError(
            f"cannot {action} {entry.version}: it is the only {entry.tier.value} version receiving "
            f"documents; promote another {entry.tier.value} version first "
            "(`tierembed models promote V`)")
    scale = (rest + entry.traffic_weight) / rest if rest > 0 else 1.0
    updated = {e.version: _stamp(e, by, at, traffic_weight=e.traffic_weight * scale) for e in others}
    return registry.with_entries(updated.get(e.version, e) for e in registry.entries)
