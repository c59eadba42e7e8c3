"""Stopping a run on SIGINT or SIGTERM: cleanly the first time, at once the second.

The first signal raises :class:`RunStopped` (a ``KeyboardInterrupt``) in the main thread,
where the pipeline runs (the in-process FnApiRunner); the run unwinds: the ledger records
the run as stopped and settles it at the spend it recorded (each API reply is recorded as it
arrives), the stand-in API server and the temporary Prefect server are stopped, and the CLI
exits 130 (SIGINT) or 143 (SIGTERM) with a one-line message. A second signal exits at once;
the child servers die with the process (they carry the parent-death signal, see
``flows.processes``) and the next run or ``tierembed budget status`` settles the run.

Two libraries stand in the way, and are worked with, not patched:

- Inside a flow run Prefect installs its own SIGTERM handler, which raises its
  ``TerminationSignal``. :func:`record_stop_signals` (used around the pipeline) wraps
  whatever handler is installed so the signal is recorded first.
- Beam re-raises an exception from inside a DoFn with the step's name added: as the same
  type when its constructor takes the message first (so :class:`RunStopped` keeps its type),
  else as a ``RuntimeError`` whose context is the original. :func:`stop_signal_of` looks
  through the chain. Beam and Prefect log the exception with its traceback on the way up;
  once a stop signal has arrived, :func:`graceful_stop` keeps those tracebacks off the
  terminal (the log lines stay).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = [
    "RunStopped",
    "graceful_stop",
    "record_stop_signals",
    "received_signal",
    "stop_signal_of",
    "exit_code_for",
]

_received: list[int] = []
_HANDLED = (signal.SIGINT, signal.SIGTERM)


class RunStopped(KeyboardInterrupt):
    """The run was stopped by a signal (``signum``). Message first, so that Beam's re-raise
    with the step name keeps the type."""

    def __init__(self, message: str = "stopped", signum: int = signal.SIGINT) -> None:
        super().__init__(message, signum)
        self.signum = signum

    def __str__(self) -> str:
        return str(self.args[0])


def received_signal() -> int | None:
    """The first stop signal this process received, if any."""
    return _received[0] if _received else None


def exit_code_for(signum: int | None) -> int:
    """130 for SIGINT, 143 for SIGTERM (128 + the signal number), as shells do."""
    return 128 + (signum or signal.SIGINT)


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _record(signum: int) -> None:
    if not _received:
        _received.append(signum)


def _handler(signum: int, frame: FrameType | None) -> None:
    if _received:
        os._exit(exit_code_for(signum))  # a second signal: stop now
    _record(signum)
    _raise_stop(signum)


def _raise_stop(signum: int) -> None:
    raise RunStopped(f"stopped by {_name(signum)}", signum)


class _NoTracebackAfterStop(logging.Filter):
    """Once a stop signal arrived, log records keep their message but lose the traceback
    (it is the signal travelling up through Beam and Prefect, not a fault)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _received and record.exc_info:
            record.exc_info, record.exc_text = None, None
        return True


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger(), *(
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    return list({id(h): h for lg in loggers for h in lg.handlers}.values())


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Handle SIGINT and SIGTERM as described above for the block (main thread only)."""
    previous = {s: signal.signal(s, _handler) for s in _HANDLED}
    quiet = _NoTracebackAfterStop()
    handlers = _all_handlers()
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for h in handlers:
            h.removeFilter(quiet)


@contextmanager
def record_stop_signals() -> Iterator[None]:
    """Record SIGINT/SIGTERM before whatever handler is installed (Prefect's, inside a flow
    run) handles it. Outside the main thread, where handlers cannot be set, does nothing.

    Each use starts a run afresh: a signal recorded during an earlier run of a long-lived
    process (a Prefect worker, a test session) is forgotten, so it cannot make a later
    failure look like a stop."""
    _received.clear()
    wrapped: dict[int, Any] = {}
    try:
        for s in _HANDLED:
            wrapped[s] = signal.signal(s, _recording(signal.getsignal(s)))
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for s, handler in wrapped.items():
            signal.signal(s, handler)


def _recording(inner: Any) -> Callable[[int, FrameType | None], None]:
    def handle(signum: int, frame: FrameType | None) -> None:
        if _received:
            os._exit(exit_code_for(signum))  # a second signal: stop now
        _record(signum)
        if inner is _handler or inner is signal.default_int_handler or (
                inner == signal.SIG_DFL and signum == signal.SIGINT):
            _raise_stop(signum)  # ours (already recorded), or Python's KeyboardInterrupt
        elif callable(inner):
            inner(signum, frame)  # Prefect's SIGTERM bridge: raises its TerminationSignal
        elif inner == signal.SIG_DFL:
            os._exit(exit_code_for(signum))
    return handle


def stop_signal_of(exc: BaseException | None) -> int | None:
    """The stop signal behind ``exc`` (looking through its cause/context chain), or None."""
    from prefect.exceptions import TerminationSignal

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RunStopped):
            return exc.signum
        if isinstance(exc, TerminationSignal):
            return int(exc.signal)
        if isinstance(exc, KeyboardInterrupt):
            return received_signal() or signal.SIGINT
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return received_signal()
