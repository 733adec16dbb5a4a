"""Prometheus metrics, one CollectorRegistry per daemon instance (tests run several side by side)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from daemon.io.bus import Partition

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# dead-letter kinds: validation (InvalidBar.kind), a failed forecast, any other error for one message, an
# unreadable stored state, the skipped bars when KRONOS_DEAD_LETTER_SKIPPED is set, and records or record
# batches the consumer could not decode (daemon/io/undecodable.py)
INVALID_KINDS = (
    "empty", "json", "schema", "key", "ts", "future", "forecast", "error", "state", "duplicate", "out_of_order",
    "undecodable",
)  # fmt: skip
SERVICES = ("kafka", "redis")
SKIP_REASONS = ("replayed", "duplicate", "out_of_order")
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
# Where a fetch's time goes, in the order the loop spends it (daemon/pipeline/loop.py); "model" is the batched
# call itself, everything else is the daemon's own overhead.
LOOP_PHASES = (
    "linger", "check_state", "validate", "load_state", "windows", "model", "encode", "publish", "store",
    "scoring", "commit",
)  # fmt: skip
_PHASE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.bars_in = Counter(
            "kronos_bars_in", "Valid bars consumed (invalid messages: kronos_invalid_messages_total).", registry=r
        )
        self.invalid = Counter(
            "kronos_invalid_messages",
            "Messages sent to the dead-letter topic, by kind (the kinds: docs/contracts/kafka.md, Dead letters).",
            ["kind"],
            registry=r,
        )
        self.dead_letters_truncated = Counter(
            "kronos_dead_letters_truncated",
            "Dead letters refused whole (oversize, broker refusal) and sent truncated instead.",
            registry=r,
        )
        self.dead_letters_failed = Counter(
            "kronos_dead_letters_failed",
            "Dead letters refused even truncated: only logged (reason and source in the log).",
            registry=r,
        )
        self.skipped = Counter(
            "kronos_skipped",
            "Valid bars skipped, by reason (duplicate, out_of_order, replayed).",
            ["reason"],
            registry=r,
        )
        self.forecasts_out = Counter("kronos_forecasts_out", "Forecasts published and stored.", registry=r)
        self.state_conflicts = Counter(
            "kronos_state_conflicts", "Bars the state store refused because it held a newer bar.", registry=r
        )
        self.latency_from_bar = Histogram(
            "kronos_latency_from_bar_seconds", "Bar timestamp until the forecast is published.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.latency_from_consume = Histogram(
            "kronos_latency_from_consume_seconds", "Message fetched until its forecast is published.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "kronos_batch_size", "Series per batched model call.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.model_step = Histogram(
            "kronos_model_step_seconds",
            "Duration of one batched model call.",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.loop_phase = Histogram(
            "kronos_loop_phase_seconds",
            "Time the loop spent per fetch in each phase (linger: from the first record until the batch was "
            "complete; model: the batched calls; the rest is the daemon's own work).",
            ["phase"],
            buckets=_PHASE_BUCKETS,
            registry=r,
        )
        self.incremental_series = Counter(
            "kronos_incremental_series",
            "Incremental mode: series per model call by how they were served (warm: from a warm session, "
            "only the new bars ran; rebuilt: from the stored token cache, no warm session matched; "
            "refreshed: new statistics, the whole window).",
            ["served"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "kronos_consumer_lag_messages",
            "Messages behind the end of the partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.undecodable_batches = Counter(
            "kronos_undecodable_batches",
            "Record batches the consumer could not decode (a codec library missing or unknown, a CRC "
            "mismatch, a malformed record): skipped past and dead-lettered (kind undecodable).",
            ["topic", "partition"],
            registry=r,
        )
        self.partition_stalled = Gauge(
            "kronos_partition_stalled",
            "1 while the partition has lag but its position has not moved for KRONOS_PARTITION_STALL_S "
            "(readiness is then 503), else 0.",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge("kronos_assigned_partitions", "Input partitions owned.", registry=r)
        self.symbols_cached = Gauge(
            "kronos_symbols_cached", "Symbols whose state is held in memory.", registry=r
        )
        self.service_up = Gauge(
            "kronos_service_up",
            "1 while the service (kafka, redis) answers the readiness probe and calls, else 0.",
            ["service"],
            registry=r,
        )
        self.service_retries = Counter(
            "kronos_service_retries", "Calls to a service retried during an outage.", ["service"], registry=r
        )
        self.state_lost = Counter(
            "kronos_state_lost",
            "Times the state store's generation marker changed under this daemon (Redis lost its data); "
            "partitions found short at assignment show in kronos_state_restored_total.",
            registry=r,
        )
        self.state_restored = Counter(
            "kronos_state_restored", "Symbols whose lost state was restored (input topic or memory).", registry=r
        )
        self.model_info = Info("kronos_model", "The model serving forecasts.", registry=r)
        # Every label value a counter can take is exported from the start (0), so rate() and alerts see
        # the series before the first event.
        for kind in INVALID_KINDS:
            self.invalid.labels(kind)
        for reason in SKIP_REASONS:
            self.skipped.labels(reason)
        for service in SERVICES:
            self.service_retries.labels(service)
        self.phases = {phase: self.loop_phase.labels(phase) for phase in LOOP_PHASES}
        for served in ("warm", "rebuilt", "refreshed"):
            self.incremental_series.labels(served)
        # CPU, memory, open files, start time; Python version; garbage collections
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def watch_graph_captures(self, read: Callable[[], tuple[int, int] | None]) -> None:
        """Export ``kronos_graph_captures_total{phase}`` from ``read()`` = (captures in all, of which
        at warm-up) of the model in service, read at each scrape (once; later calls are ignored)."""
        if not getattr(self, "_graph_captures_watched", False):
            self.registry.register(_GraphCaptures(read))
            self._graph_captures_watched = True

    def set_lag(self, lags: dict[Partition, int]) -> None:
        for p, lag in lags.items():
            self.consumer_lag.labels(p.topic, str(p.partition)).set(lag)

    def forget_partitions(self, partitions: set[Partition]) -> None:
        for p in partitions:
            for gauge in (self.consumer_lag, self.partition_stalled):
                with contextlib.suppress(KeyError):
                    gauge.remove(p.topic, str(p.partition))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format the ``Accept`` header asks for (OpenMetrics or Prometheus text)
        and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _GraphCaptures(Collector):
    """CUDA graphs of the decode step captured by the model in service: at warm-up (start-up or a new
    version's load, beside the serving one) and while serving (inside forecast calls: should stay 0,
    since every batch-size bucket is captured at warm-up). A model swap starts the counts again."""

    def __init__(self, read: Callable[[], tuple[int, int] | None]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        got = self._read() or (0, 0)
        family = CounterMetricFamily(
            "kronos_graph_captures",
            "CUDA graphs captured for the decode step, by phase (warm_up; serving should stay 0).",
            labels=["phase"],
        )
        total, warm = got
        family.add_metric(["warm_up"], warm)
        family.add_metric(["serving"], total - warm)
        yield family
