"""Prometheus metrics of on-demand forecasts (``POST /v1/forecast``, :mod:`daemon.pipeline.ondemand`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("ok", "invalid", "queue_full", "not_ready", "failed")


class OnDemandMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.requests = Counter(
            "kronos_ondemand_requests", "On-demand forecast requests by outcome: ok, invalid (4xx), queue_full "
            "(429), not_ready (503), failed.", ["outcome"], registry=r,
        )  # fmt: skip
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.queued = Gauge("kronos_ondemand_queued", "On-demand requests waiting for the model.", registry=r)
        self.batch_size = Histogram(
            "kronos_ondemand_batch_size", "Requests per on-demand model call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "kronos_ondemand_latency_seconds", "An answered on-demand request: its arrival in the queue until its "
            "message is built.", buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r,
        )  # fmt: skip
