"""Prefect events from tierembed: budget alerts, model-version changes.

Events go to the Prefect API of the flow run or of ``PREFECT_API_URL``. Elsewhere (a
script, the command line with no server configured) nothing would receive them and Prefect
would start a throwaway local server just to drop them, so they are only logged; the
function says which happened.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["emit_prefect_event"]

_log = logging.getLogger(__name__)


def emit_prefect_event(**kwargs: Any) -> bool:
    """``prefect.events.emit_event(**kwargs)`` when a Prefect API is there; True if sent."""
    from prefect.context import FlowRunContext
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    if FlowRunContext.get() is None and not PREFECT_API_URL.value():
        _log.info("no Prefect API (PREFECT_API_URL unset): event %s logged only", kwargs.get("event"))
        return False
    return emit_event(**kwargs) is not None
