"""Errors raised by tierembed, classified as terminal or transient.

Every error carries what failed (document id, stage, tier, model version) so that a log
line or a dead letter is enough to act on. Vendor exceptions are mapped to these once, at
the boundary of each backend module; nothing here imports a vendor SDK.
"""

from __future__ import annotations

__all__ = [
    "TierembedError",
    "TerminalError",
    "TransientError",
    "ConfigError",
    "InputNotFoundError",
    "ValidationFailure",
    "EmbeddingFailure",
    "BudgetExceeded",
]


class TierembedError(Exception):
    """Base class. ``retryable`` says whether trying the same thing again can succeed."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        doc_ids: tuple[str, ...] = (),
        stage: str | None = None,
        tier: str | None = None,
        model_version: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.doc_ids = doc_ids
        self.stage = stage
        self.tier = tier
        self.model_version = model_version

    def __str__(self) -> str:
        where = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("stage", self.stage),
                ("tier", self.tier),
                ("model_version", self.model_version),
            )
            if v
        )
        ids = ""
        if self.doc_ids:
            shown = ", ".join(self.doc_ids[:5])
            more = f" (+{len(self.doc_ids) - 5} more)" if len(self.doc_ids) > 5 else ""
            ids = f" [documents: {shown}{more}]"
        prefix = f"[{where}] " if where else ""
        return f"{prefix}{self.message}{ids}"


class TerminalError(TierembedError):
    """Trying again will fail the same way: the record goes to the dead-letter output."""

    retryable = False


class TransientError(TierembedError):
    """A passing fault (rate limit, 5xx, timeout): the single retry layer may try again."""

    retryable = True


class ConfigError(TerminalError):
    """The configuration is invalid; the message names the field and the fix."""


class InputNotFoundError(TerminalError):
    """The input path or glob matched no file."""


class ValidationFailure(TerminalError):
    """An input record failed validation (reason in the message)."""


class EmbeddingFailure(TierembedError):
    """An embedding call failed; ``retryable`` is set per instance from the cause."""

    def __init__(self, message: str, *, retryable: bool, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retryable = retryable


class BudgetExceeded(TerminalError):
    """Sending more to the paid tier would pass the budget."""
