"""The API's Prometheus metrics, on the daemon's registry (``/metrics`` of the ops port).

``kronos_api_requests_total{route,status}``: answers by route template (``/v1/forecasts/{symbol}``,
not the symbol: the label set stays small; ``unmatched`` for unknown paths) and status code;
``kronos_api_request_seconds{route}``: time to the answer's headers (a stream's: to its start);
``kronos_api_streams``: open ``/v1/stream`` connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry, open_streams: Callable[[], int]) -> None:
        self.requests = Counter(
            "kronos_api_requests", "HTTP API answers by route and status", ["route", "status"], registry=registry
        )
        self.seconds = Histogram(
            "kronos_api_request_seconds", "HTTP API time to the answer's headers", ["route"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )  # fmt: skip
        self.streams = Gauge("kronos_api_streams", "open /v1/stream connections", registry=registry)
        self.streams.set_function(lambda: float(open_streams()))


class CountRequests:
    """ASGI middleware: one count and one time per answer, labelled by the matched route."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", "unmatched")
                self.metrics.requests.labels(route, str(message["status"])).inc()
                self.metrics.seconds.labels(route).observe(time.perf_counter() - began)
            await send(message)

        await self.app(scope, receive, counting)
