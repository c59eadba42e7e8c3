"""An Alertmanager webhook receiver for tests.

Alertmanager's ``webhook_configs`` POST a JSON document per notification (version "4":
``status``, ``receiver``, ``groupLabels``, ``commonLabels``, ``commonAnnotations`` and
``alerts``, each with its own ``status``, ``labels``, ``annotations``, ``startsAt``). This
server keeps every notification with the time it arrived, so a test can wait for an alert
and measure how long the delivery took::

    with WebhookReceiver() as hook:
        ...  # put hook.url in alertmanager.yml's webhook_configs
        note, alert = hook.wait_for_alert("TierembedBudgetExceeded", timeout_s=30)
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import LoopbackServer

__all__ = ["Notification", "WebhookReceiver"]


@dataclass(frozen=True, slots=True)
class Notification:
    """One webhook call: its JSON body, the path it came to, and when (time.monotonic())."""

    path: str
    body: dict[str, Any]
    received_at: float

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return list(self.body.get("alerts", []))


class WebhookReceiver(LoopbackServer):
    """HTTP server on 127.0.0.1 that records JSON POSTs (an ephemeral port unless given)."""

    def __init__(self, port: int = 0, path: str = "/alerts") -> None:
        self.path = path
        self._notes: list[Notification] = []
        self._cond = threading.Condition()
        super().__init__(port, name="webhook-receiver")

    @property
    def url(self) -> str:
        return f"{self.root_url}{self.path}"

    @property
    def notifications(self) -> list[Notification]:
        with self._cond:
            return list(self._notes)

    def wait_for_alert(
        self, alertname: str, *, status: str = "firing", timeout_s: float = 30.0
    ) -> tuple[Notification, dict[str, Any]]:
        """The first notification carrying an alert ``alertname`` in ``status``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for note in self._notes:
                    for alert in note.alerts:
                        if alert.get("labels", {}).get("alertname") == alertname and alert.get(
                            "status"
                        ) == status:
                            return note, alert
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({a.get("labels", {}).get("alertname", "?")
                                   for n in self._notes for a in n.alerts})
                    raise TimeoutError(
                        f"no {status} {alertname} alert within {timeout_s}s; alerts received: {seen}"
                    )
                self._cond.wait(left)

    def _record(self, path: str, body: dict[str, Any]) -> None:
        with self._cond:
            self._notes.append(Notification(path, body, time.monotonic()))
            self._cond.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                receiver._record(self.path, body if isinstance(body, dict) else {"value": body})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler
