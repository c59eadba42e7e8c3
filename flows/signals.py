"""Stopping a run on SIGINT or SIGTERM: cleanly the first time, at once the second.

The first signal raises ``KeyboardInterrupt`` in the main thread, where the pipeline runs
(the in-process FnApiRunner); the run unwinds: the ledger records the run as stopped and
settles it at the spend it recorded (each API reply is recorded as it arrives), the stand-in
API server and the temporary Prefect server are stopped, and the CLI exits 130 (SIGINT) or
143 (SIGTERM). A second signal exits at once; the child servers die with the process (they
carry the parent-death signal, see ``flows.processes``) and the next run or ``tierembed
budget status`` settles the run in the ledger.

Inside a flow run Prefect installs its own SIGTERM handler, which raises its
``TerminationSignal`` instead; Beam re-raises an exception from inside a DoFn as a
``RuntimeError`` whose context is the original. :func:`stopped_by_signal` looks through the
chain for either.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["graceful_stop", "received_signal", "stopped_by_signal", "exit_code_for"]

_received: list[int] = []
_HANDLED = (signal.SIGINT, signal.SIGTERM)


def received_signal() -> int | None:
    """The first stop signal this process received, if any."""
    return _received[0] if _received else None


def exit_code_for(signum: int | None) -> int:
    """130 for SIGINT, 143 for SIGTERM (128 + the signal number), as shells do."""
    return 128 + (signum or signal.SIGINT)


def _handler(signum: int, frame: FrameType | None) -> None:
    if _received:
        os._exit(exit_code_for(signum))  # a second signal: stop now
    _received.append(signum)
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Handle SIGINT and SIGTERM as above for the block (main thread only)."""
    previous = {s: signal.signal(s, _handler) for s in _HANDLED}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stopped_by_signal(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception in its cause/context chain) is a stop signal."""
    from prefect.exceptions import TerminationSignal

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt | TerminationSignal):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return bool(_received)
