"""Wiring: settings -> state store, bus, forecaster, loop, ops endpoints; start, serve, shut down.

Shutdown (SIGTERM or SIGINT): stop fetching, let the batch in flight finish and commit, then close
the consumer (leaving the group, so its partitions move at once), the producer (flushing) and Redis.
All of it is bounded by ``KRONOS_GRACEFUL_SHUTDOWN_S`` (default 25 s): keep it a few seconds under the
pod's ``terminationGracePeriodSeconds`` (Kubernetes default 30 s), after which the kubelet sends
SIGKILL. A batch cut off by the bound is not committed and is processed again by the next owner,
with the same forecast ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from daemon.api.server import Listener, api_listener
from daemon.api.ui.data import SwapLog
from daemon.errors import DaemonError, StateError
from daemon.io.bus import DeadLetters, InputBus, OutputBus, Partition
from daemon.io.retry import Abandoned, Outages
from daemon.logging import configure_logging
from daemon.model.build import build_forecaster, check_forecaster, graph_captures, on_cuda
from daemon.model.follower import ModelFollower
from daemon.model.manifest import prepare_model_settings
from daemon.model.runner import ModelExecutor
from daemon.model.settings_check import warn_short_refreshed_context
from daemon.model.swap import ModelMetrics
from daemon.ops.metrics import Metrics
from daemon.ops.server import ops_listener
from daemon.ops.stall import StallWatch
from daemon.ops.startup_checks import credentials_error, ensure_topics
from daemon.pipeline.config import loop_config
from daemon.pipeline.loop import ForecastLoop
from daemon.pipeline.ondemand import build_ondemand
from daemon.scoring.scorer import OnlineScorer, build_scorer
from daemon.scoring.seeding import Seeder
from daemon.settings import Settings, load_settings, unknown_env_names
from daemon.state.base import StateStore, SymbolState
from kronos_core.stream_types import StreamForecaster

log = structlog.get_logger("kronos.app")


class Daemon:
    """One daemon instance. Parts not given are built from ``settings`` (Kafka, Redis, the engine);
    the demo and tests pass in-memory ones, or their own forecaster."""

    def __init__(
        self,
        settings: Settings,
        *,
        bus_in: InputBus | None = None,
        bus_out: OutputBus | None = None,
        store: StateStore | None = None,
        forecaster: StreamForecaster | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.bus_in = bus_in
        self.bus_out = bus_out
        self.store = store
        self.forecaster = forecaster
        self.runner = ModelExecutor()  # the model thread: the loop's rounds, swaps, on-demand forecasts
        self.symbols: dict[str, SymbolState] = {}  # the loop's symbol cache (swaps' smoke forecasts read it)
        self.loop: ForecastLoop | None = None
        self.models: ModelFollower | None = None  # follows KRONOS_MODEL__REGISTRY's champion
        self.ops: Listener | None = None  # /healthz, /readyz, /metrics on KRONOS_HTTP_PORT
        self.api: Listener | None = None  # the HTTP API on KRONOS_API__PORT (daemon/api)
        self.swaps = SwapLog()  # the last model swaps, for the dashboard (daemon/api/ui)
        self.scorer: OnlineScorer | None = None
        self.shadow: Any = None  # challengers and the decider (daemon/model/live.py), with a registry
        self.ondemand = build_ondemand(settings, lambda: self.forecaster, lambda: self.scorer, self.metrics.registry)
        self._run_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()
        self.outages = Outages(
            settings.retry_initial_s,
            settings.retry_max_s,
            settings.outage_give_up_s,
            on_change=lambda service, up: self.metrics.service_up.labels(service).set(1 if up else 0),
            on_retry=lambda service: self.metrics.service_retries.labels(service).inc(),
        )
        self.probes: dict[str, str | None] = {"kafka": "not probed yet", "redis": "not probed yet"}
        self.stalls = StallWatch(settings.partition_stall_s)

    # -- probes ---------------------------------------------------------------------------------

    def live(self) -> tuple[bool, dict[str, Any]]:
        if self.loop is None or self._run_task is None:
            return True, {"loop": "starting"}
        age = time.monotonic() - self.loop.last_tick
        ok = age < self.settings.health_stale_s and not self._run_task.done()
        return ok, {"last_tick_age_s": round(age, 3), "loop_running": not self._run_task.done()}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the model is loaded, the consumer owns partitions, Kafka and Redis answer (the
        periodic probe, and no call to them is waiting out an outage), no partition is stalled (lag,
        and no progress for ``partition_stall_s``) and no stop was requested."""
        model = self.forecaster is not None
        assigned = self.loop is not None and self.loop.assignment_received
        parts = sorted(f"{p.topic}/{p.partition}" for p in self.bus_in.assignment()) if self.bus_in else []
        down = {s: e for s, e in self.probes.items() if e is not None}
        down.update(self.outages.down())
        details: dict[str, Any] = {
            "model_loaded": model,
            "assignment_received": assigned,
            "partitions": parts,
            "services_down": down,
            "stopping": self._stop_requested.is_set(),
        }
        stalled = {f"{p.topic}/{p.partition}": info for p, info in sorted(self.stalls.stalled.items())}
        if stalled:
            details["stalled_partitions"] = stalled
            details["reason"] = (
                f"{len(stalled)} partition(s) have lag and have not advanced for "
                f"KRONOS_PARTITION_STALL_S={self.settings.partition_stall_s:g} s or more"
            )
        if self.forecaster is not None:
            details["model_version"] = self.forecaster.model_version
        ok = model and assigned and bool(parts) and not down and not stalled and not self._stop_requested.is_set()
        return ok, details

    def _watch_stalls(self) -> None:
        """Partitions with lag that do not advance (kronos_partition_stalled, readiness)."""
        if self.bus_in is None:
            return
        before = set(self.stalls.stalled)
        progress = self.bus_in.progress()
        stalled = self.stalls.observe(progress, time.monotonic())
        for p in progress:
            self.metrics.partition_stalled.labels(p.topic, str(p.partition)).set(1 if p in stalled else 0)
        for p in set(stalled) - before:
            log.error(
                "partition stalled: it has lag and its position has not moved", topic=p.topic,
                partition=p.partition, **stalled[p], stall_s=self.stalls.stall_s,
            )  # fmt: skip
        for p in before - set(stalled):
            log.info("partition advancing again", topic=p.topic, partition=p.partition)

    async def _probe_services(self) -> None:
        """Every ``health_probe_interval_s``: can Redis and the Kafka broker be reached? (readiness)"""
        interval = self.settings.health_probe_interval_s
        while True:
            for service, probe in (("redis", self._probe_redis), ("kafka", self._probe_kafka)):
                try:
                    async with asyncio.timeout(max(1.0, interval)):
                        await probe()
                except (DaemonError, TimeoutError, OSError) as exc:
                    if self.probes.get(service) is None:
                        log.warning("readiness probe failed", service=service, error=str(exc) or repr(exc))
                    self.probes[service] = str(exc) or repr(exc)
                    self.metrics.service_up.labels(service).set(0)
                else:
                    self.probes[service] = None
                    if service not in self.outages.down_since:
                        self.metrics.service_up.labels(service).set(1)
            self._watch_stalls()
            await asyncio.sleep(interval)

    async def _probe_redis(self) -> None:
        if self.store is not None:
            await self.store.ping()

    async def _probe_kafka(self) -> None:
        if self.bus_in is not None:
            await self.bus_in.probe()

    async def _ping_store(self) -> None:
        """Redis refusing the password is a configuration error, not an outage: not retried."""
        assert self.store is not None
        try:
            await self.store.ping()
        except StateError as exc:
            wrong = credentials_error(exc)
            if wrong is not None:
                raise wrong from exc
            raise

    async def _connect(self, service: str, what: str, fn: Any) -> None:
        """Start-up calls to Kafka or Redis: retried through an outage (readiness 503 meanwhile)."""
        await self.outages.call(service, what, fn, abandon=self._stop_requested.is_set)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        # Hugging Face ids -> cached folders, then manifest.json runtime defaults and bounds
        s = self.settings = await asyncio.to_thread(prepare_model_settings, self.settings)
        warn_short_refreshed_context(s)
        if s.http_port is not None:
            self.ops = ops_listener(self.metrics, self.live, self.ready, s.http_host, s.http_port)
            await self.ops.start()
        if s.api.port is not None:  # before the model loads: unusable keys stop start-up at once
            self.api = api_listener(self)
            await self.api.start()
        if self.store is None:
            from daemon.state.redis import RedisStateStore

            self.store = RedisStateStore.from_settings(s.redis, s.model.max_context, s.api.stream_length)
        await self._connect("redis", "connecting to Redis", self._ping_store)
        if self.forecaster is None and s.model.registry:
            self.models = ModelFollower(
                s,
                ModelMetrics(self.metrics.registry),
                states=self._states,
                on_swap=self._model_swapped,
                model_thread=self.runner.call,
                seed=Seeder(s, lambda: self.scorer, self._states, self.metrics.registry),
            )
            self.forecaster = await self.models.start()
            if s.challengers.enabled:
                from daemon.model.live import LiveModels

                self.shadow = LiveModels(self.models, self.metrics.registry, self._states, self.runner.call)
        if self.forecaster is None:
            log.info("loading the model", model=s.model.model_dump(mode="json"))
            self.forecaster = await asyncio.to_thread(build_forecaster, s)
        check_forecaster(self.forecaster, s)
        self.metrics.model_info.info({"version": self.forecaster.model_version, "mode": self.forecaster.mode})
        self.metrics.watch_graph_captures(lambda: graph_captures(self.forecaster) if self.forecaster else None)
        if (self.bus_in is None or self.bus_out is None) and s.kafka.exactly_once:
            from daemon.io.kafka_eos import TransactionalInput, TransactionalOutput

            self.bus_out = TransactionalOutput(s.kafka)
            self.bus_in = TransactionalInput(s.kafka, self.bus_out)
        if self.bus_in is None or self.bus_out is None:
            from daemon.io.kafka_consumer import KafkaInput
            from daemon.io.kafka_producer import KafkaOutput

            # a misspelt topic stops here (or is created when asked); an unreachable broker is waited out
            await self._connect("kafka", "checking the topics", lambda: ensure_topics(s.kafka))
            self.bus_in = self.bus_in or KafkaInput(s.kafka)
            self.bus_out = self.bus_out or KafkaOutput(s.kafka)
        self.bus_in.on_undecodable = self._count_undecodable
        await self._connect("kafka", "starting the producer", self.bus_out.start)
        dead = DeadLetters(
            self.bus_out, s.kafka.dead_letter_topic, self._count_dead_letter, self._count_dead_letter_trouble
        )
        if self.scorer is None:  # the demo sets its own
            self.scorer = build_scorer(s, self.store, self.metrics.registry)
        self.loop = ForecastLoop(
            bus_in=self.bus_in,
            bus_out=self.bus_out,
            dead_letters=dead,
            store=self.store,
            forecaster=self.forecaster,
            config=loop_config(
                s,
                pipeline=on_cuda(self.forecaster) if s.batch.pipeline == "auto" else bool(s.batch.pipeline),
                scorer=self.scorer,
                challengers=None if self.shadow is None else self.shadow.challengers,
            ),
            runner=self.runner,
            states=self.symbols,
            metrics=self.metrics,
            outages=self.outages,
        )
        self.ondemand.attach(self.runner)
        loop, bus_in = self.loop, self.bus_in
        await self._connect("kafka", "starting the consumer", lambda: bus_in.start(loop))
        self._probe_task = asyncio.create_task(self._probe_services(), name="kronos-probes")
        if self.models is not None:
            self.models.run_in_background()
        if self.shadow is not None:
            self.shadow.attach(self.scorer, self.bus_out)
            self.shadow.start()
        log.info(
            "daemon started",
            input_topic=s.kafka.input_topic,
            output_topic=s.kafka.output_topic,
            group=s.kafka.group_id,
            model_version=self.forecaster.model_version,
            mode=self.forecaster.mode,
        )

    def _states(self) -> dict[str, SymbolState]:
        return self.symbols

    def _model_swapped(self, new: StreamForecaster, old_version: str) -> None:
        self.swaps.record(old_version, new.model_version)
        self.metrics.model_info.info({"version": new.model_version, "mode": new.mode})

    def _count_dead_letter(self, kind: str) -> None:
        self.metrics.invalid.labels(kind).inc()

    def _count_undecodable(self, partition: Partition) -> None:
        self.metrics.undecodable_batches.labels(partition.topic, str(partition.partition)).inc()

    def _count_dead_letter_trouble(self, outcome: str) -> None:
        counter = self.metrics.dead_letters_truncated if outcome == "truncated" else self.metrics.dead_letters_failed
        counter.inc()

    async def serve(self) -> None:
        """Run the loop until :meth:`request_stop`; a fatal error in the loop propagates."""
        assert self.loop is not None, "start() first"
        if self._stop_requested.is_set():
            return
        self._run_task = asyncio.create_task(self.loop.run(), name="kronos-loop")
        await self._run_task

    def request_stop(self) -> None:
        if not self._stop_requested.is_set():
            serving = self._run_task is not None and not self._run_task.done()
            log.info("stop requested: finishing the batch in flight" if serving else "stop requested")
            self._stop_requested.set()
        if self.loop is not None:
            self.loop.request_stop()

    async def close(self) -> None:
        """Finish, commit and close everything within ``graceful_shutdown_s``."""
        deadline = time.monotonic() + self.settings.graceful_shutdown_s
        self.request_stop()
        if self.api is not None:  # no new API requests; those in flight finish (the loop still runs)
            await self.api.stop()
        if self._run_task is not None and not self._run_task.done():
            _, pending = await asyncio.wait({self._run_task}, timeout=max(0.0, deadline - time.monotonic()))
            if pending:
                log.warning("the batch in flight did not finish in time; it will be processed again")
                self._run_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._run_task
        closers: list[tuple[str, Callable[[], Awaitable[None]] | None]] = [
            ("challengers", None if self.shadow is None else self.shadow.close),
            ("on-demand", self.ondemand.close),
            ("models", None if self.models is None else self.models.close),
            ("consumer", None if self.bus_in is None else self.bus_in.stop),
            ("producer", None if self.bus_out is None else self.bus_out.stop),
            ("store", None if self.store is None else self.store.close),
            ("scores", None if self.scorer is None else self.scorer.close),
        ]
        for name, closer in closers:
            if closer is not None:
                await close_within(name, closer, deadline)
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        self.runner.shutdown(wait=False, cancel_futures=True)  # a call in progress finishes in the background
        if self.ops is not None:
            await self.ops.stop()
        log.info("daemon closed")


async def close_within(name: str, closer: Callable[[], Awaitable[None]], deadline: float) -> None:
    """Run one part's close until ``deadline`` (at least 0.1 s); one that has not finished by then (a
    client that swallows its cancellation, say) is cancelled and left behind, so a shutdown never hangs."""
    task = asyncio.ensure_future(closer())
    done, _ = await asyncio.wait({task}, timeout=max(0.1, deadline - time.monotonic()))
    if not done:
        task.cancel()
        log.warning("closing did not finish in time; left behind", part=name)
        return
    exc = task.exception()
    if exc is not None:
        log.warning("closing failed", part=name, error=repr(exc))


async def serve_until_signalled(daemon: Daemon) -> int:
    """Start, serve until SIGTERM/SIGINT, close. Returns the exit code (1 after a fatal error)."""
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, daemon.request_stop)
    code = 0
    try:
        await daemon.start()
        await daemon.serve()
    except Abandoned:
        log.info("stop requested while waiting for a service at start-up")
    except DaemonError as exc:
        log.error("daemon failed", error=str(exc), error_type=type(exc).__name__)
        code = 1
    finally:
        await daemon.close()
    return code


def run(settings: Settings | None = None) -> int:
    """``kronos-stream run``: the daemon from the environment's settings."""
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    unknown = unknown_env_names()
    if unknown:
        log.warning("ignoring environment variables that match no setting (typos?)", names=unknown)
    code = asyncio.run(serve_until_signalled(Daemon(settings)))
    # Everything is closed (the group left, the producer flushed). Interpreter teardown would now
    # garbage-collect every object (torch's included) for seconds on a busy node, and a restarted pod
    # waits for this exit: objects alive now are frozen out of the final collections.
    gc.freeze()
    return code
