"""A small OTLP/HTTP metrics receiver for tests: it decodes real exports.

Accepts ``POST /v1/metrics`` with a protobuf ``ExportMetricsServiceRequest`` (gzip or not),
the way the OpenTelemetry SDK's OTLP/HTTP exporter sends it, keeps every request, and
answers 200 with an empty ``ExportMetricsServiceResponse``. The helpers flatten what
arrived into :class:`MetricPoint` rows (one per data point, in arrival order), so a test
can check names, units, kinds, temporality, attributes and values::

    with OtlpReceiver() as rx:
        ...  # point an OTLP exporter at rx.url (a base URL; the exporter adds /v1/metrics)
        cost = rx.latest("embedding.cost", tier="api")
        assert cost.unit == "USD" and cost.value == pytest.approx(expected)

Anything but ``POST /v1/metrics`` gets 404; a body that does not decode gets 400 and is
counted in :attr:`OtlpReceiver.rejected`.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from tests.fakes.loopback import LoopbackServer

__all__ = ["MetricPoint", "OtlpReceiver", "CUMULATIVE", "DELTA"]

DELTA = 1  # AggregationTemporality values of the OTLP proto
CUMULATIVE = 2


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One decoded data point, with what its metric and resource said about it."""

    request: int
    name: str
    unit: str
    description: str
    kind: str  # "sum" | "gauge" | "histogram"
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    time_unix_nano: int
    value: float = 0.0  # sum and gauge points
    temporality: int = 0  # sum and histogram
    monotonic: bool = False  # sum
    count: int = 0  # histogram
    sum: float = 0.0  # histogram
    bucket_counts: tuple[int, ...] = ()
    explicit_bounds: tuple[float, ...] = ()

    def matches(self, name: str, attrs: dict[str, Any]) -> bool:
        return self.name == name and all(self.attributes.get(k) == v for k, v in attrs.items())


def _any_value(value: Any) -> Any:
    which = value.WhichOneof("value")
    return None if which is None else getattr(value, which)


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in kvs}


def _points(index: int, request: ExportMetricsServiceRequest) -> list[MetricPoint]:
    rows: list[MetricPoint] = []
    for rm in request.resource_metrics:
        resource = _attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                base = {"request": index, "name": metric.name, "unit": metric.unit,
                        "description": metric.description, "resource": resource,
                        "scope": sm.scope.name}
                rows.extend(_metric_points(metric, base))
    return rows


def _metric_points(metric: Any, base: dict[str, Any]) -> list[MetricPoint]:
    kind = metric.WhichOneof("data")
    data = getattr(metric, kind)
    rows = []
    for dp in data.data_points:
        common = {**base, "kind": kind, "attributes": _attrs(dp.attributes),
                  "time_unix_nano": dp.time_unix_nano}
        if kind == "histogram":
            rows.append(MetricPoint(**common, temporality=data.aggregation_temporality, count=dp.count,
                                    sum=dp.sum, bucket_counts=tuple(dp.bucket_counts),
                                    explicit_bounds=tuple(dp.explicit_bounds)))
            continue
        value = dp.as_double if dp.WhichOneof("value") == "as_double" else float(dp.as_int)
        extra = ({"temporality": data.aggregation_temporality, "monotonic": data.is_monotonic}
                 if kind == "sum" else {})
        rows.append(MetricPoint(**common, value=value, **extra))
    return rows


class OtlpReceiver(LoopbackServer):
    """OTLP/HTTP metrics receiver on 127.0.0.1 (an ephemeral port unless given)."""

    def __init__(self, port: int = 0) -> None:
        self._requests: list[ExportMetricsServiceRequest] = []
        self._lock = threading.Lock()
        self.rejected = 0
        super().__init__(port, name="otlp-receiver")

    @property
    def url(self) -> str:
        """Base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``telemetry.otlp_endpoint``."""
        return self.root_url

    # -- reading ------------------------------------------------------------------------
    @property
    def requests(self) -> list[ExportMetricsServiceRequest]:
        with self._lock:
            return list(self._requests)

    def points(self, name: str | None = None, **attrs: Any) -> list[MetricPoint]:
        """Every data point received (of metric ``name`` whose attributes include ``attrs``)."""
        rows = [p for i, r in enumerate(self.requests) for p in _points(i, r)]
        if name is None:
            return rows
        return [p for p in rows if p.matches(name, attrs)]

    def latest(self, name: str, **attrs: Any) -> MetricPoint:
        """The last point received for ``name`` with ``attrs``; AssertionError if none."""
        found = self.points(name, **attrs)
        assert found, f"no {name} point with {attrs} among {sorted({p.name for p in self.points()})}"
        return found[-1]

    def names(self) -> set[str]:
        return {p.name for p in self.points()}

    def wait_for(self, predicate: Callable[[OtlpReceiver], bool], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"OTLP receiver: condition not met within {timeout_s}s")
            time.sleep(0.05)

    # -- serving ------------------------------------------------------------------------
    def _accept(self, body: bytes, encoding: str) -> bool:
        try:
            raw = gzip.decompress(body) if encoding == "gzip" else body
            request = ExportMetricsServiceRequest.FromString(raw)
        except (DecodeError, OSError, EOFError):
            with self._lock:
                self.rejected += 1
            return False
        with self._lock:
            self._requests.append(request)
        return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") != "/v1/metrics":
                    self._reply(404, b"")
                elif receiver._accept(body, self.headers.get("Content-Encoding", "")):
                    self._reply(200, ExportMetricsServiceResponse().SerializeToString())
                else:
                    self._reply(400, b"undecodable ExportMetricsServiceRequest")

            def _reply(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        return Handler
