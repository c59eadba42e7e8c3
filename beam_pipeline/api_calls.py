"""What the API tier's backend takes and gives, and how it reads the vendor's replies.

The typed records around :class:`beam_pipeline.api_embedder.ApiEmbedder` (its config, the
inputs, per-call stats, the outcome per input, one reply as it arrives) and the one place
where the ``openai`` client's exceptions and replies are mapped to them: :func:`classify`
(by exception type, status code and the error body's structured ``type``; never by message
text) and :func:`parse_reply`. Provider error text is scrubbed of the configured API key
and of anything shaped like an ``sk-...`` key before it goes into a :class:`CallFailure`
(and so into logs and dead letters).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tiering.backoff import BackoffPolicy
from tiering.packing import RequestLimits
from tiering.pricing import Price
from tiering.ratelimits import server_wait_s

__all__ = [
    "ApiEmbedderConfig",
    "ApiInput",
    "ApiReply",
    "CallFailure",
    "ApiCallStats",
    "EmbedOutcome",
    "MalformedReply",
    "classify",
    "headers_of",
    "parse_reply",
]

_ENDPOINT_REFUSES = frozenset({401, 403, 404})
_RETRYABLE_4XX = frozenset({408, 409})
_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_\-*.]+")


@dataclass(frozen=True, slots=True)
class ApiEmbedderConfig:
    """Everything one worker's embedder needs; limits are this worker's share."""

    base_url: str | None
    api_key: str
    model: str
    provider: str
    limits: RequestLimits
    requests_per_minute: int
    tokens_per_minute: int
    max_in_flight: int
    timeout_s: float
    backoff: BackoffPolicy
    breaker_failure_threshold: int
    breaker_reset_after_s: float
    dimensions: int | None = None
    input_type: str | None = None
    spend_cap_usd: float | None = None
    """This worker's share of the run budget; None = no runtime cap."""
    price: Price | None = None
    """The model's price, for the spend cap (billing uses ``usage``)."""
    breaker_max_wait_s: float = 0.0
    """How long a request waits for an open breaker before it is short-circuited (0: at once)."""
    max_request_share: float = 0.05
    """Largest share of ``tokens_per_minute`` one request may take (estimated x ratio seen)."""
    window_s: float = 60.0
    """The provider's rate-limit window; ``requests_per_minute``/``tokens_per_minute`` are per it."""

    def __post_init__(self) -> None:
        if not 0 < self.max_request_share <= 1 or self.window_s <= 0 or self.breaker_max_wait_s < 0:
            raise ValueError(f"bad pacing settings: max_request_share {self.max_request_share}, "
                             f"window_s {self.window_s}, breaker_max_wait_s {self.breaker_max_wait_s}")

    def __repr__(self) -> str:  # never print the key
        return f"ApiEmbedderConfig(base_url={self.base_url!r}, model={self.model!r}, api_key=***)"

    @property
    def max_tokens_per_input(self) -> int:
        """The largest input sent (estimated tokens): the model's limit, at most
        ``max_request_share`` of the token limit. Chunk documents to this."""
        share = max(1, int(self.max_request_share * self.tokens_per_minute))
        return max(1, min(self.limits.max_tokens_per_input, self.limits.max_tokens, share))


@dataclass(frozen=True, slots=True)
class ApiInput:
    """One text to embed and its estimated tokens (from :mod:`tiering.chunking`)."""

    text: str
    est_tokens: int
    group: int | None = None
    """Inputs sharing a group (the chunks of one document) are packed together when they
    fit and refused together by the spend cap; None is a group of its own."""


@dataclass(frozen=True, slots=True)
class CallFailure:
    """One failed attempt, classified. ``status`` is the HTTP code or a failure kind
    ('timeout', 'connection', 'malformed', 'too_long', 'too_large', 'breaker_open')."""

    status: str
    error_type: str
    message: str
    retryable: bool
    counts_for_breaker: bool
    retry_after_s: float | None = None
    about_input: bool = False
    """A terminal 4xx that names the input (or nothing): bisect to find the bad one."""
    endpoint_refused: bool = False
    """401/403/404: not retried in this run, but retryable by replay once the key, model or
    endpoint is fixed."""
    limit_type: str | None = None
    """A 429's structured ``error.type``: ``requests`` or ``tokens`` (OpenAI), else None."""


@dataclass
class ApiCallStats:
    """What one :meth:`ApiEmbedder.embed` call did; billed and estimated figures apart."""

    requests_by_status: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    rate_limit_wait_s: float = 0.0
    billed_tokens: int = 0
    """Tokens from replies' ``usage`` (every 200, whatever became of its documents)."""
    unmetered_tokens: int = 0
    """Estimated tokens of 200 replies that carried no ``usage`` (not in billed_tokens)."""
    timed_out_est_tokens: int = 0
    """Estimated tokens of timed-out requests: maybe billed by the provider, never counted
    in billed_tokens; the spend guard keeps their upper bound as spent."""
    sent_est_tokens: int = 0
    over_budget_inputs: int = 0
    breaker_opened: int = 0
    breaker_transitions: Counter[str] = field(default_factory=Counter)
    """Breaker transitions during this call, e.g. ``{"closed->open": 1, "half-open->closed": 1}``."""
    breaker_wait_s: float = 0.0
    """Time requests spent waiting for an open breaker (summed over requests)."""
    size_splits: int = 0
    """Requests split because the provider refused them for size (429 too large, 400)."""
    budget_splits: int = 0
    """Requests split so that a smaller one fits what is left of the spend cap."""
    held_tokens: float = 0.0
    """Tokens the provider reported used beyond our own window (other clients on the key)."""
    latencies_s: list[float] = field(default_factory=list)


@dataclass
class EmbedOutcome:
    """Per input index: a vector (with its billed tokens), a failure, or not sent because
    the breaker was open (``short_circuited``) or the spend cap was reached (``over_budget``)."""

    vectors: dict[int, list[float]] = field(default_factory=dict)
    billed_tokens: dict[int, int] = field(default_factory=dict)
    failures: dict[int, CallFailure] = field(default_factory=dict)
    short_circuited: set[int] = field(default_factory=set)
    over_budget: set[int] = field(default_factory=set)
    unmetered: set[int] = field(default_factory=set)
    """Inputs whose reply had no ``usage``: their ``billed_tokens`` are the estimate."""
    stats: ApiCallStats = field(default_factory=ApiCallStats)


@dataclass(frozen=True, slots=True)
class ApiReply:
    """One 200 reply, handed to ``on_reply`` as it arrives: the input indices it carried,
    their vectors and billed tokens (apportioned; the estimate when ``unmetered``)."""

    idxs: tuple[int, ...]
    vectors: tuple[list[float], ...]
    billed_tokens: tuple[int, ...]
    unmetered: bool
    stats: ApiCallStats
    """The running stats of the call (requests, 429s, waits so far)."""


class MalformedReply(Exception):
    """A 200 reply whose body has the wrong shape (retried like a server error)."""


def headers_of(exc: BaseException) -> Mapping[str, str]:
    response = getattr(exc, "response", None)
    return dict(response.headers) if response is not None else {}


def _status_failure(exc: Any, msg: str) -> CallFailure:
    code = int(exc.status_code)
    wait = server_wait_s(headers_of(exc), time.time())
    if code == 429:
        kind = getattr(exc, "type", None)  # the body's structured error.type
        return CallFailure("429", "RateLimited", msg, True, False, wait,
                           limit_type=kind if isinstance(kind, str) else None)
    if code >= 500 or code in _RETRYABLE_4XX:
        return CallFailure(str(code), "ServerError", msg, True, True, wait)
    if code in _ENDPOINT_REFUSES:
        return CallFailure(
            str(code), type(exc).__name__,
            f"{msg}; the endpoint refused this worker: fix api key, model or base_url, then "
            "replay these documents with `tierembed replay`", True, False, endpoint_refused=True,
        )
    about_input = getattr(exc, "param", None) in (None, "input")
    return CallFailure(str(code), type(exc).__name__, msg, False, False, about_input=about_input)


def _scrub(text: str, api_key: str) -> str:
    """Remove the configured key and anything that looks like an ``sk-`` key."""
    if len(api_key) >= 4:
        text = text.replace(api_key, "***")
    return _KEY_LIKE.sub("sk-***", text)


def classify(exc: BaseException, api_key: str = "") -> CallFailure:
    """Map an exception from the openai client to a CallFailure (the one vendor mapping).

    Never raises: an exception type not known here is a terminal failure naming the type."""
    import openai

    msg = _scrub(f"{type(exc).__name__}: {exc}", api_key)[:500]
    if isinstance(exc, openai.APITimeoutError):
        return CallFailure("timeout", "Timeout", msg, True, True)
    if isinstance(exc, openai.APIConnectionError):
        return CallFailure("connection", "ConnectionError", msg, True, True)
    if isinstance(exc, openai.APIStatusError):
        return _status_failure(exc, msg)
    if isinstance(exc, (openai.APIResponseValidationError, MalformedReply, json.JSONDecodeError)):
        return CallFailure("malformed", "MalformedReply", msg, True, True)
    return CallFailure(
        "unexpected", type(exc).__name__,
        f"unexpected {msg}; not retried (report it as a bug with this message)", False, False,
    )


def parse_reply(raw: Any, expected: int) -> tuple[Any, list[list[float]]]:
    """The parsed 200 reply and its vectors; a body of the wrong shape is MalformedReply."""
    try:
        reply = raw.parse()  # the SDK's legacy raw response parses synchronously
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # e.g. the SDK's "No embedding data received" for {"error": ...} sent with a 200
        raise MalformedReply(f"200 reply the SDK cannot parse: {type(exc).__name__}: {exc}") from exc
    return reply, _vectors(reply, expected)

def _vectors(reply: Any, expected: int) -> list[list[float]]:
    """The reply's vectors in input order; any structural problem is MalformedReply."""
    data = getattr(reply, "data", None)
    if not isinstance(data, list):
        raise MalformedReply(f"200 reply without a data list (got {type(data).__name__})")
    try:
        ordered = sorted(data, key=lambda d: d.index)
        indices = [d.index for d in ordered]
        vectors = [_embedding_of(d) for d in ordered]
    except (AttributeError, TypeError) as exc:
        raise MalformedReply(f"200 reply with malformed data: {type(exc).__name__}") from exc
    if indices != list(range(expected)):
        raise MalformedReply(f"reply has {len(data)} embeddings for {expected} inputs")
    return vectors


def _embedding_of(item: Any) -> list[float]:
    embedding = item.embedding
    if not isinstance(embedding, list) or not embedding:
        raise TypeError(f"embedding is {type(embedding).__name__}, not a list of floats")
    return embedding
