"""How a finished run ended, and the exit code that says so.

The user asked for the truth: a run that could not embed or store some of its documents did
not succeed, even though nothing was lost (they are dead letters, replayable). The policy:

==========================  =====  ==================================================
status                      exit   when
==========================  =====  ==================================================
``completed``               0      every record embedded, skipped as unchanged, or
                                   (none) rejected by validation
``completed_with_warnings`` 0      input records were rejected by validation, within
                                   ``dead_letters.max_invalid_fraction`` (default 1:
                                   bad input is the input's fault, reported, not fatal)
``partial``                 3      the embedding or store stages dead-lettered more than
                                   ``dead_letters.max_failed_fraction`` of the targets
                                   (default 0), or validation more than its share
``failed``                  1      the accounting does not add up, or a stage reports
                                   that it never worked (``failures``)
==========================  =====  ==================================================

Exit code 2 is kept for errors before the run (bad settings, bad options, missing input),
130 / 143 for a run stopped by SIGINT / SIGTERM. Prefect sees the same status: ``partial``
and ``failed`` end the flow run in a Failed state (named ``Partial`` for the first),
``completed_with_warnings`` in a Completed state named ``CompletedWithWarnings``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from tiering.report import RunReport

__all__ = ["RunStatus", "RunOutcome", "OutcomePolicy", "run_outcome", "EXIT_USAGE", "EXIT_SIGINT",
           "EXIT_SIGTERM"]

EXIT_USAGE = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class RunStatus(StrEnum):
    COMPLETED = "completed"
    COMPLETED_WITH_WARNINGS = "completed_with_warnings"
    PARTIAL = "partial"
    FAILED = "failed"

    @property
    def exit_code(self) -> int:
        return {"completed": 0, "completed_with_warnings": 0, "partial": 3, "failed": 1}[self.value]


@dataclass(frozen=True, slots=True)
class OutcomePolicy:
    """The tolerances of ``dead_letters.max_failed_fraction`` / ``max_invalid_fraction``."""

    max_failed_fraction: float = 0.0
    max_invalid_fraction: float = 1.0


@dataclass(frozen=True, slots=True)
class RunOutcome:
    status: RunStatus
    reasons: tuple[str, ...]

    @property
    def exit_code(self) -> int:
        return self.status.exit_code

    @property
    def summary(self) -> str:
        """One line: the status and why."""
        text = self.status.value.replace("_", " ")
        return text + (": " + "; ".join(self.reasons) if self.reasons else "")


def _share(part: int, whole: int) -> float:
    return part / whole if whole else (1.0 if part else 0.0)


def run_outcome(report: RunReport, policy: OutcomePolicy, failures: Sequence[str] = ()) -> RunOutcome:
    """Decide how ``report``'s run ended (see the module docstring). ``failures`` are
    reasons from other checks that make the run fail outright."""
    if failures or not report.accounting_ok():
        reasons = list(failures)
        if not report.accounting_ok():
            reasons.append("the accounting does not add up: some records are neither embedded, "
                           "skipped nor dead-lettered")
        return RunOutcome(RunStatus.FAILED, tuple(reasons))
    by_stage = dict(report.dead_letters_by_stage)
    invalid = by_stage.get("validate", 0)
    failed = report.dead_letters - invalid
    targets = sum(line.routed for line in report.lines)
    reasons: list[str] = []
    partial = False
    if failed:
        stages = ", ".join(f"{k}: {n}" for k, n in sorted(by_stage.items()) if k != "validate")
        share = _share(failed, targets)
        over = share > policy.max_failed_fraction
        partial |= over
        reasons.append(f"{failed} of {targets} targets dead-lettered by {stages} ({share:.1%}, "
                       f"{'over' if over else 'within'} dead_letters.max_failed_fraction="
                       f"{policy.max_failed_fraction:g}); replay them with `tierembed replay "
                       f"{report.dead_letter_path.rsplit('/', 1)[0]}`")
    if invalid:
        share = _share(invalid, report.records_read)
        over = share > policy.max_invalid_fraction
        partial |= over
        reasons.append(f"{invalid} of {report.records_read} input records rejected by validation "
                       f"({share:.1%}, {'over' if over else 'within'} dead_letters.max_invalid_fraction="
                       f"{policy.max_invalid_fraction:g})")
    if partial:
        return RunOutcome(RunStatus.PARTIAL, tuple(reasons))
    if reasons:
        return RunOutcome(RunStatus.COMPLETED_WITH_WARNINGS, tuple(reasons))
    return RunOutcome(RunStatus.COMPLETED, ())
