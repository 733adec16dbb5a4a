"""One round: the windows of a round's bars (one per symbol), one batched model call on the model
thread, the published bands, then publish (acknowledged) and store the forecasts, and score them.

Kafka first, Redis second. Were Redis written first, a crash between the two would leave the bar's ts
in Redis: the replayed bar would then be skipped as a duplicate and its forecast would never reach the
output topic. This way a replay at worst publishes the same forecast (same id) twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import structlog

from daemon.errors import ForecasterError
from daemon.io.bus import InMessage, OutputBus
from daemon.io.messages import (
    Bar,
    ForecastContext,
    build_forecast_message,
    encode_json,
    horizon_ns,
    infer_interval_ns,
)
from daemon.model.runner import ModelExecutor
from daemon.model.swap import pin_forecaster
from daemon.ops.metrics import Metrics
from daemon.pipeline.config import LoopConfig
from daemon.pipeline.context import LoopContext, error_letter
from daemon.pipeline.features import ReportsStats, ServedCounts
from daemon.pipeline.intake import Intake
from daemon.pipeline.plan import Item, Letter, skip_reason
from daemon.state.base import StateStore, StateUpdate
from daemon.state.cache import SymbolCache
from kronos_core.stream_types import SeriesForecast, SeriesWindow, StreamForecaster, derive_seed

log = structlog.get_logger("kronos.loop")

# Forecasts encoded before the producer is given them (it sends while the next ones are encoded).
_PUBLISH_CHUNK = 64


@dataclass
class BarRecord:
    """One bar through a round: its message, window and context, then the model's answer for it and,
    once encoded, the published forecast message."""

    msg: InMessage
    bar: Bar
    window: SeriesWindow
    context: ForecastContext
    result: SeriesForecast | Exception | None = None
    value: bytes = b""  # the forecast message as published


class RoundRunner:
    """Runs a fetch's rounds, one batched model call each, on the model thread it is given."""

    def __init__(
        self, *, bus_out: OutputBus, store: StateStore, forecaster: StreamForecaster, cfg: LoopConfig,
        ctx: LoopContext, cache: SymbolCache, intake: Intake, metrics: Metrics, runner: ModelExecutor,
    ) -> None:  # fmt: skip
        self._out = bus_out
        self._store = store
        self._forecaster = forecaster
        self._cfg = cfg
        self._ctx = ctx
        self._cache = cache
        self._intake = intake
        self._metrics = metrics
        self._runner = runner
        self._reloaded: set[str] = set()  # symbols loaded again since the fetch was planned

    async def run(self, items: list[Item], fetched_at: float) -> None:
        """One batched model call; publish (acknowledged), then store, the round's forecasts."""
        clock = self._ctx.clock
        with clock("windows"):
            items = await self._still_new(items)
            if not items:
                return
            forecaster = pin_forecaster(self._forecaster)  # one model version for the whole call
            version = forecaster.model_version
            records: list[BarRecord] = []
            dead: list[Letter] = []
            for msg, bar in items:
                try:
                    records.append(self._record(msg, bar, version, fetched_at))
                except Exception as exc:  # this bar cannot be made into a window: it alone is dead-lettered
                    dead.append(error_letter(msg, "building the forecast window", exc))
        with clock("model"):
            if records:
                await self._run_model(forecaster, records)
        published = await self._publish_round(records, dead, version, forecaster.mode)
        with clock("store"):
            stored, refused = await self._store_round(published, version)
        await self._score(stored, refused, version, forecaster.mode)

    def planned(self) -> None:
        """A fetch (or segment) was planned: its bars were checked against the states loaded for it."""
        self._reloaded.clear()

    async def _still_new(self, items: list[Item]) -> list[Item]:
        """Symbols the store refused earlier in this fetch (dropped from the cache) are loaded again;
        the bars of symbols reloaded since the fetch was planned are dropped when no longer new (the
        others were checked when it was planned, and only this fetch's own rounds moved them on)."""
        again = [item for item in items if item[1].symbol not in self._cache.states]
        if again:
            failed = {id(msg) for msg, _ in again} - {id(msg) for msg, _ in await self._cache.load(again)}
            self._reloaded.update(bar.symbol for _, bar in again)
            items = [item for item in items if id(item[0]) not in failed]  # unreadable state: dead-lettered
        if not self._reloaded:
            return items
        fresh, skipped = [], []
        for item in items:
            msg, bar = item
            if bar.symbol in self._reloaded:
                state = self._cache.states[bar.symbol]
                reason = skip_reason(msg, bar.ts_ns, state.last_ts, state.source)
                if reason is not None:
                    skipped.append((item, reason))
                    continue
            fresh.append(item)
        await self._intake.skip(skipped)
        return fresh

    def _record(self, msg: InMessage, bar: Bar, version: str, fetched_at: float) -> BarRecord:
        state = self._cache.states[bar.symbol]
        values, stamps, ts_list = state.window(bar)
        interval = infer_interval_ns(ts_list, int(self._cfg.default_interval_s * 1e9))
        calendar = self._cfg.calendar
        future = (calendar.future if calendar else horizon_ns)(bar.ts_ns, interval, self._cfg.horizon)
        seed = derive_seed(bar.symbol, bar.ts_ns, version, self._cfg.base_seed)
        tokens = state.token_state if state.token_version == version else None
        window = SeriesWindow(
            bar.symbol, values, stamps, np.asarray(future, dtype="datetime64[ns]"), seed, tokens
        )
        ctx = ForecastContext(
            bar.symbol, bar.ts_ns, interval, future, seed, len(ts_list),
            msg.topic, msg.partition, msg.offset, msg.timestamp_ms, fetched_at,
        )  # fmt: skip
        ctx.context_complete = state.complete or len(ts_list) >= self._cfg.max_context
        ctx.context_first_ns = ts_list[0]
        return BarRecord(msg, bar, window, ctx)

    async def _run_model(self, forecaster: StreamForecaster, records: list[BarRecord]) -> None:
        """The batched call on the model thread; if it fails, each series alone, to isolate the culprit."""
        loop = asyncio.get_running_loop()
        windows = [r.window for r in records]
        started = time.time()
        shadow = self._cfg.challengers
        try:
            if shadow is None or not shadow.active:
                if shadow is not None:
                    shadow.begin_round(None)
                results: list[SeriesForecast | Exception] = list(
                    await loop.run_in_executor(self._runner, self._call_model, forecaster, windows)
                )
            else:  # the champion's forecasts come back as soon as they are made, before the challengers'
                early = shadow.begin_round(loop)
                assert early is not None
                job = loop.run_in_executor(self._runner, self._call_model, forecaster, windows)
                results = list(await shadow.champion_results(early, job))
        except Exception as exc:
            log.warning(
                "batched forecast failed; retrying series one by one", size=len(windows), error=repr(exc)
            )
            results = []
            for window in windows:
                try:
                    results.extend(await loop.run_in_executor(self._runner, self._call_model, forecaster, [window]))
                except Exception as one:
                    results.append(one)
        elapsed = time.time() - started
        self._metrics.model_step.observe(elapsed)
        self._metrics.batch_size.observe(len(windows))
        for record, result in zip(records, results, strict=True):
            record.result = result
            record.context.model_started_at = started
            record.context.model_ms = elapsed * 1e3

    def _call_model(self, forecaster: StreamForecaster, windows: list[SeriesWindow]) -> list[SeriesForecast]:
        results = list(forecaster.forecast(windows, self._cfg.horizon))
        stats = forecaster.last_stats if isinstance(forecaster, ReportsStats) else None  # the engine's forecaster
        if isinstance(stats, ServedCounts):  # how it served them
            for served, count in (
                ("warm", stats.series_warm), ("rebuilt", stats.series_rebuilt), ("refreshed", stats.series_refreshed)
            ):  # fmt: skip
                if isinstance(count, int) and count:
                    self._metrics.incremental_series.labels(served).inc(count)
        if len(results) != len(windows) or any(
            r.series_id != w.series_id for r, w in zip(results, windows, strict=False)
        ):
            raise ForecasterError(
                f"the forecaster answered {len(results)} forecasts for {len(windows)} windows, or out of order"
            )
        if self._cfg.challengers is not None:  # same job, same windows, right after the champion's call
            self._cfg.challengers.champion_done(results)
            self._cfg.challengers.forecast_in_job(windows, results, self._cfg.horizon)
        return results

    async def _publish_round(
        self, records: list[BarRecord], dead: list[Letter], version: str, mode: str
    ) -> list[BarRecord]:
        """Bands, encode and publish (acknowledged) the round's forecasts, and its dead letters; the
        records published. They go out in chunks while the rest are still being encoded (a round holds
        one bar per symbol, so their order does not matter); nothing is stored before every chunk is
        acknowledged."""
        clock, scorer = self._ctx.clock, self._cfg.scorer
        sending: list[asyncio.Task[None]] = []
        published: list[BarRecord] = []
        try:
            with clock("encode"):
                if scorer is not None:
                    await scorer.adjust(
                        [r.window for r in records], [r.result for r in records],  # type: ignore[misc]
                        version, [r.context for r in records],
                    )  # fmt: skip
                chunk: list[tuple[bytes | None, bytes | None]] = []
                for record in records:
                    ctx, result = record.context, record.result
                    try:
                        if isinstance(result, Exception):
                            raise result
                        assert result is not None
                        record.value = encode_json(build_forecast_message(ctx, result, version, mode, time.time()))
                    except Exception as exc:  # a model failure for one series: dead-letter that bar only
                        reason = f"forecast failed: {type(exc).__name__}: {exc}"
                        log.error(
                            "forecast failed", symbol=ctx.symbol, ts=ctx.ts_ns, source=record.msg.source, error=reason
                        )
                        dead.append((record.msg, reason, "forecast"))
                        continue
                    published.append(record)
                    chunk.append((record.bar.symbol.encode(), record.value))
                    if len(chunk) == _PUBLISH_CHUNK:
                        sending.append(asyncio.create_task(self._publish(chunk)))
                        chunk = []
                        await asyncio.sleep(0)  # the producer sends this chunk while the next is encoded
                if chunk:
                    sending.append(asyncio.create_task(self._publish(chunk)))
            with clock("publish"):
                await asyncio.gather(*sending)
                await self._ctx.dead_letter(dead)
        finally:
            for task in sending:  # one chunk failed (or the loop is stopping): the others stop too
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)
        return published

    async def _store_round(self, published: list[BarRecord], version: str) -> tuple[list[BarRecord], set[str]]:
        """The published forecasts' bars and token states to the store: the records stored, and the
        symbols the store refused (another writer got there first)."""
        updates = [StateUpdate(r.bar, r.result.token_state, r.value, version, r.msg.source) for r in published]  # type: ignore[union-attr]
        ttl = self._cfg.forecast_ttl_s
        refused = set(await self._ctx.io("redis", "storing state", lambda: self._store.apply(updates, ttl)))
        now = time.time()
        stored = [r for r in published if r.bar.symbol not in refused]
        for r in stored:
            self._cache.states[r.bar.symbol].append(r.bar, r.result.token_state, version, r.msg.source)  # type: ignore[union-attr]
            self._metrics.forecasts_out.inc()
            self._metrics.latency_from_bar.observe(max(0.0, now - r.bar.ts_ns / 1e9))
            self._metrics.latency_from_consume.observe(max(0.0, now - r.context.fetched_at))
        return stored, refused

    async def _score(self, stored: list[BarRecord], refused: set[str], version: str, mode: str) -> None:
        """The scorer's and the challengers' hooks after the store; then the refused symbols are dropped."""
        states, scorer, shadow = self._cache.states, self._cfg.scorer, self._cfg.challengers
        if scorer is not None:
            with self._ctx.clock("scoring"):
                await scorer.stored([(states[r.bar.symbol], r.window, r.result) for r in stored], version)  # type: ignore[misc]
        if shadow is not None:  # the challengers' forecasts of this round: scored, never served
            with self._ctx.clock("scoring"):
                await shadow.after_round([(states[r.bar.symbol], r.context) for r in stored], mode)
        if refused:
            # Another writer got there first (a stale owner, or a retried write): reload next time.
            self._metrics.state_conflicts.inc(len(refused))
            log.warning("state store holds newer bars; reloading those symbols", symbols=sorted(refused))
            self._cache.forget(refused)

    async def _publish(self, records: list[tuple[bytes | None, bytes | None]]) -> None:
        """Forecasts to the output topic, acknowledged (retried through an outage)."""
        await self._ctx.io("kafka", "publishing forecasts", lambda: self._out.send_batch(self._cfg.output_topic, records))

    async def republish(self, replayed: Sequence[Item]) -> None:
        """Exactly-once: a replayed bar that Redis already holds *from this very message* had its
        transaction aborted after the Redis write; publish its stored forecast again (same bytes) in
        this transaction. A true duplicate (another message with the same ts) stays skipped."""
        records = []
        for msg, bar in replayed:
            state = self._cache.states.get(bar.symbol)
            if state is None or state.source != (msg.topic, msg.partition, msg.offset):
                continue  # an earlier message: committed in an earlier transaction
            stored = await self._ctx.io(
                "redis", "reading a stored forecast", partial(self._store.forecast_from, bar.symbol, msg.source)
            )
            if stored is not None:
                records.append((bar.symbol.encode(), stored))
        if records:
            log.info("re-publishing forecasts of an aborted transaction", count=len(records))
            await self._ctx.io(
                "kafka", "re-publishing forecasts", lambda: self._out.send_batch(self._cfg.output_topic, records)
            )
