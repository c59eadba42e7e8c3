"""Child processes that never outlive the run: the stand-in API server, the Prefect server.

A run starts servers of its own (``flows.endpoint.LocalApiServer``, and the temporary Prefect
API of ``flows.prefect_server``). Stopping them in ``finally`` blocks covers every ending
except SIGKILL and a crash of the interpreter, after which they would live on, reparented to
PID 1, holding ports and - through their environment - secrets. So each is started with the
Linux parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``): the kernel kills the child
the moment the thread that started it dies, however it dies. Elsewhere (macOS) there is no
such signal and only the ``finally`` blocks apply.

The parent-death signal fires when the *thread* that forked the child ends, so start these
servers from a thread that lives as long as the run (the CLI's and the flow's main thread).
Their environment leaves out secrets (:func:`child_environment`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Mapping

__all__ = ["die_with_parent", "child_environment", "SECRET_MARKERS"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Names of environment variables a helper server must not inherit.
SECRET_MARKERS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")
_SECRET_PREFIXES = ("OPENAI_", "TIEREMBED_", "AWS_", "GOOGLE_", "AZURE_", "WEAVIATE_")


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return libc.prctl  # type: ignore[no-any-return]


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die (SIGKILL) when this thread dies; None where
    the platform has no parent-death signal. Kept minimal: it runs between fork and exec."""
    prctl = _load_prctl()  # loaded here, before the fork
    if prctl is None:
        return None
    parent = os.getpid()

    def _arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return _arm


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without secrets (API keys, tokens, passwords, our own and
    the cloud providers' settings), plus ``extra``."""
    env = {
        name: value for name, value in os.environ.items()
        if not name.upper().startswith(_SECRET_PREFIXES)
        and not any(marker in name.upper() for marker in SECRET_MARKERS)
    }
    env.update(extra or {})
    return env
