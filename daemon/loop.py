"""The forecasting loop: fetch a micro-batch, validate, forecast round by round, publish, store, commit.

Delivery is at-least-once. For each fetch:

1. invalid messages go to the dead-letter topic (original bytes, a ``reason`` header);
2. per symbol, bars whose ts is not after the last seen one (stored, or earlier in this fetch) are
   skipped and counted;
3. the remaining bars run in rounds (the k-th bar of every symbol in round k), each round one
   batched forecaster call in a worker thread, so the event loop keeps heartbeating;
4. each round's forecasts are published and acknowledged by Kafka, *then* written to the state store;
5. only when all of that succeeded are the fetch's offsets committed.

A crash anywhere before 5 replays the fetch; replayed bars get the same window, seed and model, hence
the same forecast id and numbers, and bars already stored are skipped as duplicates. A stop request
or a partition revocation cuts a fetch short between rounds: the offsets up to the first bar not
done are committed and the rest is fetched again (by this member or the partition's next owner).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from daemon.bus import DeadLetters, InMessage, InputBus, OutputBus, Partition
from daemon.calendars import HorizonCalendar
from daemon.errors import CommitRefused, ForecasterError, InvalidBar
from daemon.metrics import Metrics
from daemon.online_scoring import OnlineScorer
from daemon.schemas import (
    Bar,
    ForecastContext,
    build_forecast_message,
    encode_json,
    horizon_ns,
    infer_interval_ns,
    parse_bar,
)
from daemon.state import StateStore, StateUpdate, SymbolState
from kronos_core.stream_types import SeriesForecast, SeriesWindow, StreamForecaster, derive_seed

log = structlog.get_logger("kronos.loop")

Item = tuple[InMessage, Bar]


@dataclass(frozen=True)
class LoopConfig:
    output_topic: str
    horizon: int
    max_batch_size: int = 256
    max_wait_ms: int = 20
    default_interval_s: float = 60.0
    forecast_ttl_s: int | None = None
    base_seed: int = 0
    calendar: HorizonCalendar | None = None  # horizon timestamps; None: continuous (24/7)
    scorer: OnlineScorer | None = None  # online scoring and band calibration (daemon/online_scoring.py)


def next_offsets(batch: Sequence[InMessage]) -> dict[Partition, int]:
    """Per partition, the offset to commit once the whole batch is done: last offset + 1."""
    offsets: dict[Partition, int] = {}
    for m in batch:
        offsets[m.tp] = max(offsets.get(m.tp, 0), m.offset + 1)
    return offsets


def commit_offsets(batch: Sequence[InMessage], not_done: Sequence[InMessage]) -> dict[Partition, int]:
    """Per partition, the offset to commit: past the whole batch, or at its first message not done.

    Rounds run across symbols, so when a batch is cut short the done messages of a partition need not
    be a prefix; committing up to the first one not done replays the rest, and the bars among them
    already stored are skipped as duplicates.
    """
    offsets = next_offsets(batch)
    for m in not_done:
        offsets[m.tp] = min(offsets[m.tp], m.offset)
    return offsets


def plan_rounds(
    items: Sequence[Item], last_seen: dict[str, int | None]
) -> tuple[list[list[Item]], list[tuple[Item, str]]]:
    """Split a fetch's valid bars into rounds and skipped bars.

    A bar whose ts is not after the symbol's last seen ts (``last_seen``, then earlier bars of this
    fetch) is skipped as ``duplicate`` (equal) or ``out_of_order`` (earlier). Round k holds the k-th
    remaining bar of every symbol, so each symbol's bars are forecast in order.
    """
    last = dict(last_seen)
    queues: dict[str, list[Item]] = {}
    skipped: list[tuple[Item, str]] = []
    for item in items:
        bar = item[1]
        prev = last.get(bar.symbol)
        if prev is not None and bar.ts_ns <= prev:
            skipped.append((item, "duplicate" if bar.ts_ns == prev else "out_of_order"))
            continue
        last[bar.symbol] = bar.ts_ns
        queues.setdefault(bar.symbol, []).append(item)
    depth = max((len(q) for q in queues.values()), default=0)
    rounds = [[q[k] for q in queues.values() if len(q) > k] for k in range(depth)]
    return rounds, skipped


async def _gather_or_raise(aws: Sequence[Awaitable[Any]]) -> None:
    """Await all; if any failed, raise the first failure (after all have finished)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


class ForecastLoop:
    """Consumes bars and produces forecasts until :meth:`request_stop`; also the rebalance handler."""

    def __init__(
        self,
        *,
        bus_in: InputBus,
        bus_out: OutputBus,
        dead_letters: DeadLetters,
        store: StateStore,
        forecaster: StreamForecaster,
        config: LoopConfig,
        metrics: Metrics,
    ) -> None:
        self._in = bus_in
        self._out = bus_out
        self._dead = dead_letters
        self._store = store
        self._forecaster = forecaster
        self._cfg = config
        self._metrics = metrics
        self._states: dict[str, SymbolState] = {}  # owned symbols, loaded from the store on first sight
        self._owner: dict[str, Partition] = {}  # symbol -> the input partition it arrives on
        self._busy = asyncio.Lock()  # held while a fetch is processed; a revocation waits for it
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kronos-model")
        self._stopping = False
        self._revoking = False
        self._in_fetch = False
        self._task: asyncio.Task[None] | None = None
        self.last_tick = time.monotonic()
        self.assignment_received = False

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch and process micro-batches until a stop is requested; the batch in flight finishes."""
        self._task = asyncio.current_task()
        while not self._stopping:
            batch = await self._fetch()
            self.last_tick = time.monotonic()
            if batch is None:
                break
            if batch:
                # No await between the fetch returning and taking the lock: a revocation that
                # starts now waits until this batch is processed and committed.
                async with self._busy:
                    await self._process_safely(batch)
            self._metrics.set_lag(self._in.lag())
        log.info("loop stopped", symbols=len(self._states))

    def request_stop(self) -> None:
        """Stop taking work: an idle fetch is interrupted; a batch in flight finishes its current round
        and commits what is done."""
        self._stopping = True
        if self._in_fetch and self._task is not None:
            self._task.cancel()

    async def _fetch(self) -> list[InMessage] | None:
        """The next micro-batch, or None when a stop interrupted the fetch."""
        self._in_fetch = True
        try:
            return await self._in.fetch(self._cfg.max_batch_size, self._cfg.max_wait_ms)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return None
        finally:
            self._in_fetch = False

    async def _process_safely(self, batch: list[InMessage]) -> None:
        try:
            await self.process(batch)
        except CommitRefused as exc:
            # The group moved on without us; the new owner replays from the last commit.
            log.warning("commit refused after a rebalance; dropping cached state", error=str(exc))
            self._drop(set(self._owner.values()))

    async def process(self, batch: list[InMessage]) -> None:
        """One fetch, from validation to commit."""
        fetched_at = time.time()
        owned = self._in.assignment()
        batch = [m for m in batch if m.tp in owned]  # revoked since the fetch: the new owner has them
        items = await self._validate(batch)
        self._metrics.bars_in.inc(len(items))  # valid bars; invalid ones count in kronos_invalid_messages
        await self._load_states(items)
        last_seen = {s: st.last_ts for s, st in self._states.items()}
        rounds, skipped = plan_rounds(items, last_seen)
        for (msg, bar), reason in skipped:
            self._metrics.skipped.labels(reason).inc()
            log.info("bar skipped", reason=reason, symbol=bar.symbol, ts=bar.ts_ns, source=msg.source)
        done = 0
        for round_items in rounds:
            if self._stopping or self._revoking:
                break  # shutting down or giving partitions up: commit what is done, leave the rest
            await self._forecast_round(round_items, fetched_at)
            self.last_tick = time.monotonic()
            done += 1
        left = [msg for round_items in rounds[done:] for msg, _ in round_items]
        if left:
            log.info("batch cut short", bars_left=len(left), stopping=self._stopping, revoking=self._revoking)
        await self._in.commit(commit_offsets(batch, left))

    async def _validate(self, batch: list[InMessage]) -> list[Item]:
        """Valid bars, in order; invalid messages go to the dead-letter topic (acknowledged)."""
        items: list[Item] = []
        dead: list[Awaitable[None]] = []
        for msg in batch:
            try:
                items.append((msg, parse_bar(msg.key, msg.value)))
            except InvalidBar as exc:
                log.warning("invalid message", reason=exc.reason, kind=exc.kind, source=msg.source)
                dead.append(self._dead.send(msg, exc.reason, exc.kind))
        await _gather_or_raise(dead)
        return items

    async def _load_states(self, items: Sequence[Item]) -> None:
        """Load from the store the symbols seen for the first time since their partition was assigned."""
        missing = sorted({bar.symbol for _, bar in items if bar.symbol not in self._states})
        if missing:
            self._states.update(await self._store.load(missing))
            self._metrics.symbols_cached.set(len(self._states))
        for msg, bar in items:
            self._owner[bar.symbol] = msg.tp

    async def _forecast_round(self, items: list[Item], fetched_at: float) -> None:
        """One batched model call; publish (acknowledged), then store, the round's forecasts."""
        items = await self._still_new(items)
        if not items:
            return
        version = self._forecaster.model_version
        windows, contexts = [], []
        for msg, bar in items:
            window, ctx = self._window(msg, bar, version, fetched_at)
            windows.append(window)
            contexts.append(ctx)

        results = await self._run_model(windows, contexts)
        scorer = self._cfg.scorer
        if scorer is not None:
            scorer.adjust(windows, results, version)

        publish: list[tuple[Item, SeriesForecast, bytes, ForecastContext]] = []
        dead: list[Awaitable[None]] = []
        for item, ctx, result in zip(items, contexts, results, strict=True):
            try:
                if isinstance(result, Exception):
                    raise result
                record = build_forecast_message(ctx, result, version, self._forecaster.mode, time.time())
                publish.append((item, result, encode_json(record), ctx))
            except Exception as exc:  # a model failure for one series: dead-letter that bar only
                reason = f"forecast failed: {type(exc).__name__}: {exc}"
                log.error(
                    "forecast failed", symbol=ctx.symbol, ts=ctx.ts_ns, source=item[0].source, error=reason
                )
                dead.append(self._dead.send(item[0], reason, "forecast"))

        # Kafka first, Redis second. Were Redis written first, a crash between the two would leave
        # the bar's ts in Redis: the replayed bar would then be skipped as a duplicate and its
        # forecast would never reach the output topic. This way a replay at worst publishes the
        # same forecast (same id) twice.
        records = [(bar.symbol.encode(), value) for (_, bar), _, value, _ in publish]
        await _gather_or_raise([self._out.send_batch(self._cfg.output_topic, records), *dead])
        updates = [
            StateUpdate(bar, result.token_state, value, version, msg.source)
            for (msg, bar), result, value, _ in publish
        ]
        refused = set(await self._store.apply(updates, self._cfg.forecast_ttl_s))
        now = time.time()
        for (_, bar), result, _, ctx in publish:
            if bar.symbol in refused:
                continue
            self._states[bar.symbol].append(bar, result.token_state, version)
            self._metrics.forecasts_out.inc()
            self._metrics.latency_from_bar.observe(max(0.0, now - bar.ts_ns / 1e9))
            self._metrics.latency_from_consume.observe(max(0.0, now - ctx.fetched_at))
        if scorer is not None:
            window_of = dict(zip(map(id, results), windows, strict=True))
            stored = [(self._states[bar.symbol], window_of[id(result)], result)
                      for (_, bar), result, _, _ in publish if bar.symbol not in refused]  # fmt: skip
            await scorer.stored(stored, version)
        if refused:
            # Another writer got there first (a stale owner, or a retried write): reload next time.
            self._metrics.state_conflicts.inc(len(refused))
            log.warning("state store holds newer bars; reloading those symbols", symbols=sorted(refused))
            for s in refused:
                self._states.pop(s, None)

    async def _still_new(self, items: list[Item]) -> list[Item]:
        """Reload symbols the store refused earlier in this fetch and drop bars that are no longer new."""
        await self._load_states(items)
        fresh = []
        for item in items:
            last = self._states[item[1].symbol].last_ts
            if last is not None and item[1].ts_ns <= last:
                self._metrics.skipped.labels("duplicate").inc()
                log.info("bar skipped", reason="duplicate", symbol=item[1].symbol, source=item[0].source)
            else:
                fresh.append(item)
        return fresh

    def _window(
        self, msg: InMessage, bar: Bar, version: str, fetched_at: float
    ) -> tuple[SeriesWindow, ForecastContext]:
        state = self._states[bar.symbol]
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
        return window, ctx

    async def _run_model(
        self, windows: list[SeriesWindow], contexts: list[ForecastContext]
    ) -> list[SeriesForecast | Exception]:
        """The batched call off the event loop; if it fails, each series alone, to isolate the culprit."""
        loop = asyncio.get_running_loop()
        started = time.time()
        try:
            results: list[SeriesForecast | Exception] = list(
                await loop.run_in_executor(self._executor, self._call_model, windows)
            )
        except Exception as exc:
            log.warning(
                "batched forecast failed; retrying series one by one", size=len(windows), error=repr(exc)
            )
            results = []
            for window in windows:
                try:
                    results.extend(await loop.run_in_executor(self._executor, self._call_model, [window]))
                except Exception as one:
                    results.append(one)
        elapsed = time.time() - started
        self._metrics.model_step.observe(elapsed)
        self._metrics.batch_size.observe(len(windows))
        for ctx in contexts:
            ctx.model_started_at = started
            ctx.model_ms = elapsed * 1e3
        return results

    def _call_model(self, windows: list[SeriesWindow]) -> list[SeriesForecast]:
        results = list(self._forecaster.forecast(windows, self._cfg.horizon))
        if len(results) != len(windows) or any(
            r.series_id != w.series_id for r, w in zip(results, windows, strict=False)
        ):
            raise ForecasterError(
                f"the forecaster answered {len(results)} forecasts for {len(windows)} windows, or out of order"
            )
        return results

    # -- rebalance handler ------------------------------------------------------------------------

    async def on_revoked(self, partitions: set[Partition]) -> None:
        """Called before partitions go to another member: the batch in flight stops after its current
        round and commits what is done (while this member's generation is still valid); then the
        revoked symbols are forgotten (the next owner loads them from the store)."""
        self._revoking = True  # the batch in flight stops after its current round
        try:
            async with self._busy:
                dropped = self._drop(partitions)
                self._metrics.assigned_partitions.set(len(self._in.assignment() - partitions))
        finally:
            self._revoking = False
        if partitions:
            log.info("partitions revoked", partitions=sorted(map(tuple, partitions)), symbols_dropped=dropped)

    async def on_assigned(self, partitions: set[Partition]) -> None:
        self.assignment_received = True
        self._metrics.assigned_partitions.set(len(partitions))
        log.info("partitions assigned", partitions=sorted(map(tuple, partitions)))

    def _drop(self, partitions: set[Partition]) -> int:
        symbols = [s for s, p in self._owner.items() if p in partitions]
        for s in symbols:
            self._owner.pop(s, None)
            self._states.pop(s, None)
        forget = getattr(self._forecaster, "drop", None)  # warm model sessions (incremental mode)
        if callable(forget):
            forget(symbols)
        self._metrics.forget_partitions(partitions)
        self._metrics.symbols_cached.set(len(self._states))
        return len(symbols)

    def close(self) -> None:
        """Release the model thread (a call in progress finishes in the background)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
