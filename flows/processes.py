"""Child processes that never outlive the run: the stand-in API server, the Prefect server.

A run starts servers of its own (``flows.endpoint.LocalApiServer``, and the temporary Prefect
API of ``flows.prefect_server``). Stopping them in ``finally`` blocks covers every ending
except SIGKILL and a crash of the interpreter, after which they would live on, reparented to
PID 1, holding ports and - through their environment - secrets. So each is started with the
Linux parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``): the kernel kills the child
the moment the thread that started it dies, however it dies. Elsewhere (macOS) there is no
such signal and only the ``finally`` blocks apply.

The parent-death signal fires when the *thread* that started the child ends, so start these
servers from a thread that lives as long as the run (the CLI's and the flow's main thread).
Their environment leaves out secrets (:func:`child_environment`).

The signal is armed by a small launcher (:func:`dying_with_parent`) that runs first in the
child and then ``exec``s the server, not by a ``preexec_fn``: a ``preexec_fn`` makes
``subprocess`` fork this whole process (threads, a gigabyte of model and Beam state) and run
Python in the copy before ``exec``, which Python documents as unsafe with threads and which
runs every library's at-fork hook (LanceDB's printed "lancedb fork support is experimental"
into ``tierembed search`` and warned of deadlocks). Without one, no Python code runs in the
child between the fork and the ``exec`` (and CPython may use ``vfork``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

__all__ = ["dying_with_parent", "child_environment", "SECRET_MARKERS"]

# Names of environment variables a helper server must not inherit.
SECRET_MARKERS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")
_SECRET_PREFIXES = ("OPENAI_", "TIEREMBED_", "AWS_", "GOOGLE_", "AZURE_", "WEAVIATE_")


# The launcher: arm PR_SET_PDEATHSIG (1, <linux/prctl.h>) with SIGKILL, die at once if the
# parent already died before it was armed, then become the server. It survives the exec.
# A string, not a module of ours: run with -I it sees no project path and imports only the
# stdlib, so it costs a bare interpreter start.
_LAUNCHER = """\
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit("tierembed: prctl(PR_SET_PDEATHSIG) failed: " + os.strerror(ctypes.get_errno()))
if os.getppid() != int(sys.argv[1]):
    os.kill(os.getpid(), signal.SIGKILL)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.exit("tierembed: cannot start " + sys.argv[2] + ": " + (exc.strerror or str(exc)))
"""


def dying_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so that the child is SIGKILLed by the kernel when the thread that
    starts it dies; ``argv`` unchanged where the platform has no parent-death signal. The
    child keeps the pid ``subprocess`` reports (the launcher ``exec``s the server)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    # -I -S: no site-packages, no PYTHON* variables; the launcher needs only the stdlib
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]


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
