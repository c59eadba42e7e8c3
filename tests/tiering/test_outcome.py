"""The exit-status policy: how a finished run ended, decided from its report."""

from __future__ import annotations

from typing import Any

import pytest

from tiering.outcome import OutcomePolicy, RunStatus, run_outcome
from tiering.report import RunReport, TierLine


def report(*, read: int = 10, invalid: int = 0, routed: int | None = None, written: int | None = None,
           failed: dict[str, int] | None = None, **kw: Any) -> RunReport:
    valid = read - invalid
    routed = valid if routed is None else routed
    failed = failed or {}
    written = routed - sum(failed.values()) if written is None else written
    stages = {**failed, **({"validate": invalid} if invalid else {})}
    return RunReport(
        run_id="r", source="s", records_read=read, documents_valid=valid,
        dead_letters_by_stage=tuple(sorted(stages.items())),
        lines=(TierLine("local", "v", "m", routed, written, 0, 0, 0, 0, 0.0, 0.0),),
        written=written, documents_routed=valid, skipped_unchanged=0, over_budget=0,
        api_requests=(), api_retries=0, dead_letter_path=".tierembed/dead_letters/r/dead-letters*.jsonl",
        **kw,
    )


def test_a_clean_run_is_completed_with_exit_code_0() -> None:
    outcome = run_outcome(report(), OutcomePolicy())
    assert outcome.status is RunStatus.COMPLETED and outcome.exit_code == 0 and outcome.reasons == ()


def test_bad_input_records_alone_are_warnings_by_default() -> None:
    outcome = run_outcome(report(read=392, invalid=8), OutcomePolicy())
    assert outcome.status is RunStatus.COMPLETED_WITH_WARNINGS and outcome.exit_code == 0
    assert "8 of 392 input records rejected by validation" in outcome.reasons[0]


def test_bad_input_past_its_share_makes_the_run_partial() -> None:
    outcome = run_outcome(report(read=10, invalid=3), OutcomePolicy(max_invalid_fraction=0.25))
    assert outcome.status is RunStatus.PARTIAL and outcome.exit_code == 3
    assert "over dead_letters.max_invalid_fraction=0.25" in outcome.reasons[0]


@pytest.mark.parametrize("stage", ["write", "embed"])
def test_any_store_or_embedder_dead_letter_makes_the_run_partial_by_default(stage: str) -> None:
    # the case: the store died mid-run, 1,200 of 2,000 dead-lettered, exit 0 before
    outcome = run_outcome(report(read=2000, failed={stage: 1200}), OutcomePolicy())
    assert outcome.status is RunStatus.PARTIAL and outcome.exit_code == 3
    assert f"1200 of 2000 targets dead-lettered by {stage}: 1200" in outcome.reasons[0]
    assert "tierembed replay .tierembed/dead_letters/r" in outcome.reasons[0]


def test_dead_letters_within_the_tolerance_are_warnings() -> None:
    outcome = run_outcome(report(read=100, failed={"write": 1}), OutcomePolicy(max_failed_fraction=0.05))
    assert outcome.status is RunStatus.COMPLETED_WITH_WARNINGS and outcome.exit_code == 0
    assert "within dead_letters.max_failed_fraction=0.05" in outcome.reasons[0]


def test_accounting_mismatch_or_a_stage_failure_fails_the_run() -> None:
    lost = run_outcome(report(read=10, written=9), OutcomePolicy())
    assert lost.status is RunStatus.FAILED and lost.exit_code == 1 and "accounting" in lost.reasons[0]
    broken = run_outcome(report(), OutcomePolicy(), failures=("the API tier never answered",))
    assert broken.status is RunStatus.FAILED and broken.reasons == ("the API tier never answered",)
