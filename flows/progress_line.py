"""The command line's live progress line while a run works.

``tierembed run`` shows one line on the terminal, redrawn twice a second with ``rich``,
from the run's progress files (:mod:`beam_pipeline.progress`): what the API tier has done
as its replies arrive (documents, billed tokens, dollars, requests, 429 replies and the
time spent waiting for the provider's rate limits) and what the store has taken. Nothing
is drawn when standard error is not a terminal (logs and CI stay clean).
"""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.text import Text

from beam_pipeline.progress import RunProgress, read_progress

__all__ = ["ProgressLine", "render_progress"]


def render_progress(p: RunProgress) -> str:
    """One line: the API tier's work, then the store's."""
    api = (f"API {p.api_documents:,} docs, {p.api_tokens:,} tokens, ${p.api_cost_usd:,.6f}, "
           f"{p.api_requests:,} requests")
    if p.api_429:
        api += f" ({p.api_429:,} answered 429)"
    if p.api_wait_s >= 0.1:
        api += f", waited {p.api_wait_s:,.1f}s for rate limits"
    store = f"store: {p.written:,} written, {p.dead_lettered:,} dead-lettered"
    if p.fell_back:
        store += f", {p.fell_back:,} moved to the local tier"
    return f"{api} | {store}"


class ProgressLine:
    """A context manager that redraws :func:`render_progress` while the run goes on."""

    def __init__(self, directory: str, *, console: Console | None = None, interval_s: float = 0.5,
                 force: bool = False) -> None:
        self._directory = directory
        self._console = console or Console(stderr=True)
        self._interval_s = interval_s
        self._enabled = force or self._console.is_terminal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self.last = ""

    def __enter__(self) -> ProgressLine:
        if self._enabled:
            self._live = Live(Text("starting ..."), console=self._console, transient=False,
                              auto_refresh=False)
            self._live.start()
            self._thread = threading.Thread(target=self._loop, name="tierembed-progress-line",
                                             daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.refresh()

    def refresh(self) -> None:
        progress = read_progress(self._directory)
        if progress.processes == 0:
            return  # nothing written yet (or the run has cleaned up): keep the last line
        self.last = render_progress(progress)
        if self._live is not None:
            self._live.update(Text(self.last), refresh=True)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._live is not None:
            self._live.stop()
