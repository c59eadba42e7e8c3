"""Imports a run will need, done while the temporary Prefect server boots.

Starting our Prefect server takes seconds of waiting in the launching process (the server
boots in its own process), and the first local document later waits seconds more for
``sentence_transformers`` (torch, transformers) to import. Importing those modules during
the server's boot overlaps the two on separate cores; only the import is moved, the model
itself still loads when the first document reaches the local tier, so a run with nothing
to embed (a re-run over unchanged input) loads no weights.

Only for runners that execute the pipeline in this process: a multi-process or remote
runner imports them in its workers, where an import here would buy nothing.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from tiering.settings import TierembedSettings

__all__ = ["in_process_runner", "warm_up"]

_log = logging.getLogger(__name__)
_IN_PROCESS_RUNNERS = frozenset({"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner"})


def in_process_runner(settings: TierembedSettings) -> bool:
    """Whether the pipeline runs in the launching process."""
    pipeline = settings.pipeline
    return pipeline.runner in _IN_PROCESS_RUNNERS and pipeline.direct_running_mode != "multi_processing"


def modules_for(settings: TierembedSettings) -> list[str]:
    """The heavy modules a run of ``settings`` imports in this process, in import order."""
    if not in_process_runner(settings):
        return []
    modules = ["beam_pipeline.pipeline", "sentence_transformers"]
    if settings.sink.kind == "lancedb":
        # safe to import before the run starts its stand-in API server: helper servers are
        # started without a fork of this process (flows.processes), so LanceDB's at-fork hook
        # does not run
        modules.append("lancedb")
    return modules


def warm_up(settings: TierembedSettings) -> Callable[[], None] | None:
    """A callable that imports :func:`modules_for` ``settings``; None when there are none."""
    modules = modules_for(settings)
    if not modules:
        return None

    def _import() -> None:
        for name in modules:
            importlib.import_module(name)
        _log.debug("imported %s while the Prefect server started", ", ".join(modules))

    return _import
