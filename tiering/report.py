"""The run report: what a run read, embedded, skipped, dead-lettered and spent.

Built from the run's counters (Beam metrics; names below) and the price table, so the
figures are exact: cost is billed tokens (from the provider's ``usage``) times price, summed
per model version. ``accounting_ok`` checks that nothing was lost: every record read is a
valid document or a validation dead letter, and every routed (document, version) target was
written or dead-lettered later.

Counter names (namespace ``tierembed``): ``records_read``, ``documents_valid``,
``dead_letters.<stage>``, ``routed.<tier>.<version>``, ``embedded.<tier>.<version>``,
``chunked.<tier>.<version>``, ``chunks.<tier>.<version>``, ``est_tokens.<tier>.<version>``,
``billed_tokens.api.<version>``, ``fell_back.api.<version>``, ``written.<version>``,
``routed_over_budget``, ``api_requests.<version>.<status>``, ``api_retries.<version>``,
``shadow.<tier>.<version>`` (shadow targets, also in ``routed``), ``backfill_deferred``,
``api_breaker.<version>.<from>-><to>`` (circuit breaker transitions),
``cached.api.<version>`` (documents whose vectors came from the result cache, paid earlier),
``api_size_splits.<version>`` and ``api_budget_splits.<version>``.

Budget figures: ``budget_usd`` is the budget the run was planned with (the tighter of the
per-run cap and what the month had left), ``month_to_date_usd`` the month's committed spend
before the run; ``run_left_usd`` and ``month_left_usd`` are what is left after its bill.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tiering.pricing import Price, cost_usd

__all__ = ["TierLine", "RunReport", "build_report"]


@dataclass(frozen=True, slots=True)
class TierLine:
    tier: str
    model_version: str
    model_name: str
    routed: int
    documents: int
    chunked_documents: int
    chunks: int
    est_tokens: int
    billed_tokens: int
    est_cost_usd: float
    cost_usd: float
    fell_back: int = 0
    unmetered_tokens: int = 0  # sent, but the reply had no usage: charged at the estimate
    timed_out_tokens: int = 0  # estimated tokens of requests that timed out: maybe billed, unseen


@dataclass(frozen=True, slots=True)
class RunReport:
    run_id: str
    source: str
    records_read: int
    documents_valid: int
    dead_letters_by_stage: tuple[tuple[str, int], ...]
    lines: tuple[TierLine, ...]
    written: int
    documents_routed: int
    skipped_unchanged: int
    over_budget: int
    api_requests: tuple[tuple[str, int], ...]
    api_retries: int
    dead_letter_path: str
    budget_usd: float | None = None
    month_to_date_usd: float | None = None
    monthly_limit_usd: float | None = None
    duration_s: float = 0.0
    endpoint: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    fell_back_budget: int = 0  # targets the runtime spend guard moved to the local tier
    backfill_deferred: int = 0  # backfill: documents the budget left for the next backfill run
    backfill_not_sent: int = 0  # ... of which routed, then kept from the API by its spend cap or breaker
    shadow_not_sent: int = 0  # shadow API targets the spend cap or breaker kept (live vector kept)
    budget_kept_local: int = 0  # coverage: API targets the spend cap kept (local vector kept)
    api_breaker: tuple[tuple[str, int], ...] = ()  # circuit breaker transitions, by name
    api_cached: int = 0  # API documents whose vectors came from the result cache
    api_size_splits: int = 0  # requests split after a refusal for size
    status: str = "completed"  # tiering.outcome.RunStatus: how the run ended
    status_reasons: tuple[str, ...] = ()

    @property
    def dead_letters(self) -> int:
        return sum(n for _, n in self.dead_letters_by_stage)

    @property
    def cost_usd(self) -> float:
        return sum(line.cost_usd for line in self.lines)

    @property
    def est_cost_usd(self) -> float:
        return sum(line.est_cost_usd for line in self.lines)

    @property
    def api_documents_planned(self) -> int:
        """(document, version) targets the plan sent to the paid tier."""
        return sum(line.routed for line in self.lines if line.tier == "api")

    @property
    def api_documents_wanted(self) -> int:
        """Targets that wanted the paid tier: those admitted plus those the budget moved."""
        return self.api_documents_planned + self.over_budget

    @property
    def run_left_usd(self) -> float | None:
        """This run's budget minus its billed cost; None without a limit."""
        return None if self.budget_usd is None else max(0.0, self.budget_usd - self.cost_usd)

    @property
    def month_to_date_after_usd(self) -> float | None:
        """Month-to-date spend once this run's bill is added."""
        return None if self.month_to_date_usd is None else self.month_to_date_usd + self.cost_usd

    @property
    def month_left_usd(self) -> float | None:
        """What the month has left after this run; None without a monthly limit."""
        after = self.month_to_date_after_usd
        if self.monthly_limit_usd is None or after is None:
            return None
        return max(0.0, self.monthly_limit_usd - after)

    def accounting_ok(self) -> bool:
        """Nothing lost: read = valid + validation dead letters; valid = routed + skipped
        (+ deferred by a backfill's plan); every routed (document, version) target = written +
        dead-lettered after validation + not sent (backfill deferred at run time, shadow,
        coverage targets the spend cap kept local-only)."""
        validate_dl = dict(self.dead_letters_by_stage).get("validate", 0)
        targets = sum(line.routed for line in self.lines)
        return (
            self.records_read == self.documents_valid + validate_dl
            and self.documents_valid == self.documents_routed + self.skipped_unchanged
            + self.backfill_deferred - self.backfill_not_sent
            and targets == self.written + self.dead_letters - validate_dl
            + self.backfill_not_sent + self.shadow_not_sent + self.budget_kept_local
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "source": self.source,
            "records_read": self.records_read,
            "documents_valid": self.documents_valid,
            "dead_letters": dict(self.dead_letters_by_stage),
            "written": self.written,
            "documents_routed": self.documents_routed,
            "skipped_unchanged": self.skipped_unchanged,
            "over_budget": self.over_budget,
            "fell_back_budget": self.fell_back_budget,
            "backfill_deferred": self.backfill_deferred,
            "backfill_not_sent": self.backfill_not_sent,
            "shadow_not_sent": self.shadow_not_sent,
            "budget_kept_local": self.budget_kept_local,
            "cost_usd": self.cost_usd,
            "est_cost_usd": self.est_cost_usd,
            "budget_usd": self.budget_usd,
            "month_to_date_usd": self.month_to_date_usd,
            "monthly_limit_usd": self.monthly_limit_usd,
            "run_left_usd": self.run_left_usd,
            "month_left_usd": self.month_left_usd,
            "api_documents_planned": self.api_documents_planned,
            "api_documents_wanted": self.api_documents_wanted,
            "api_requests": dict(self.api_requests),
            "api_retries": self.api_retries,
            "api_breaker": dict(self.api_breaker),
            "api_cached": self.api_cached,
            "api_size_splits": self.api_size_splits,
            "dead_letter_path": self.dead_letter_path,
            "duration_s": round(self.duration_s, 3),
            "endpoint": self.endpoint,
            "accounting_ok": self.accounting_ok(),
            "status": self.status,
            "status_reasons": list(self.status_reasons),
            "tiers": [_line_dict(line) for line in self.lines],
            "notes": list(self.notes),
        }


def _line_dict(line: TierLine) -> dict[str, object]:
    return {
        "tier": line.tier, "model_version": line.model_version, "model": line.model_name,
        "routed": line.routed, "documents": line.documents,
        "chunked_documents": line.chunked_documents, "chunks": line.chunks,
        "est_tokens": line.est_tokens, "billed_tokens": line.billed_tokens,
        "est_cost_usd": line.est_cost_usd, "cost_usd": line.cost_usd, "fell_back": line.fell_back,
        "unmetered_tokens": line.unmetered_tokens, "timed_out_tokens": line.timed_out_tokens,
    }


def _line(tier: str, version: str, model: str, c: Mapping[str, int], price: Price | None) -> TierLine:
    billed = c.get(f"billed_tokens.{tier}.{version}", 0)
    est = c.get(f"est_tokens.{tier}.{version}", 0)
    # Replies without `usage` are charged at our estimate so the budget still sees them.
    unmetered = c.get(f"unmetered_tokens.{tier}.{version}", 0)
    return TierLine(
        tier=tier,
        model_version=version,
        model_name=model,
        routed=c.get(f"routed.{tier}.{version}", 0),
        documents=c.get(f"embedded.{tier}.{version}", 0),
        chunked_documents=c.get(f"chunked.{tier}.{version}", 0),
        chunks=c.get(f"chunks.{tier}.{version}", 0),
        est_tokens=est,
        billed_tokens=billed,
        est_cost_usd=cost_usd(est, price) if price else 0.0,
        cost_usd=cost_usd(billed + unmetered, price) if price else 0.0,
        fell_back=c.get(f"fell_back.{tier}.{version}", 0),
        unmetered_tokens=unmetered,
        timed_out_tokens=c.get(f"timed_out_tokens.{tier}.{version}", 0),
    )


def _summed(counters: Mapping[str, int], prefix: str,
            name: Callable[[str], str]) -> tuple[tuple[str, int], ...]:
    """Counters under ``prefix`` summed by ``name(key)`` (over model versions), sorted."""
    out: dict[str, int] = {}
    for key, n in counters.items():
        if key.startswith(prefix) and n:
            out[name(key)] = out.get(name(key), 0) + n
    return tuple(sorted(out.items()))


def build_report(
    *,
    run_id: str,
    source: str,
    counters: Mapping[str, int],
    local_models: Mapping[str, str],
    api_models: Mapping[str, tuple[str, Price]],
    dead_letter_path: str,
    **extra: object,
) -> RunReport:
    """Turn counters into a report. ``local_models``: version -> model; ``api_models``:
    version -> (model, price)."""
    lines = [_line("local", v, m, counters, None) for v, m in local_models.items()]
    lines += [_line("api", v, m, counters, p) for v, (m, p) in api_models.items()]
    stages = sorted(
        (k.split(".", 1)[1], n) for k, n in counters.items() if k.startswith("dead_letters.") and n
    )
    requests = sorted(
        (k.rsplit(".", 1)[1], n) for k, n in counters.items() if k.startswith("api_requests.")
    )
    merged: dict[str, int] = {}
    for status, n in requests:
        merged[status] = merged.get(status, 0) + n
    return RunReport(
        run_id=run_id,
        source=source,
        records_read=counters.get("records_read", 0),
        documents_valid=counters.get("documents_valid", 0),
        dead_letters_by_stage=tuple(stages),
        lines=tuple(lines),
        written=sum(n for k, n in counters.items() if k.startswith("written.")),
        documents_routed=counters.get("documents_routed", 0),
        skipped_unchanged=counters.get("skipped_unchanged", 0),
        over_budget=counters.get("routed_over_budget", 0),
        fell_back_budget=sum(n for k, n in counters.items() if k.startswith("fell_back_budget.")),
        backfill_deferred=counters.get("backfill_deferred", 0) + counters.get("backfill_not_sent", 0),
        backfill_not_sent=counters.get("backfill_not_sent", 0),
        shadow_not_sent=sum(n for k, n in counters.items() if k.startswith("shadow_not_sent.")),
        budget_kept_local=sum(n for k, n in counters.items() if k.startswith("budget_kept_local.")),
        api_requests=tuple(sorted(merged.items())),
        api_retries=sum(n for k, n in counters.items() if k.startswith("api_retries.")),
        api_breaker=_summed(counters, "api_breaker.", lambda k: k.rsplit(".", 1)[1]),
        api_cached=sum(n for k, n in counters.items() if k.startswith("cached.api.")),
        api_size_splits=sum(n for k, n in counters.items() if k.startswith("api_size_splits.")),
        dead_letter_path=dead_letter_path,
        **extra,  # type: ignore[arg-type]
    )
