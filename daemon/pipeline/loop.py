"""The forecasting loop, a conductor: take a batch, plan, run rounds, commit.

Each stage lives in its own module: fetch, linger and reading (:mod:`daemon.pipeline.intake`); what
is new, the rounds and the offsets (:mod:`daemon.pipeline.plan`, pure functions); one round's windows,
model call, bands, publish, store and scoring (:mod:`daemon.pipeline.round`); lost-state restore
(:mod:`daemon.state.recovery`) and the symbol cache (:mod:`daemon.state.cache`). The model thread
(:class:`~daemon.model.runner.ModelExecutor`) is built by the daemon and shared with model swaps and
on-demand forecasts.

Pipelining: while a batch is processed (mostly: while the model runs), the next fetch is already
under way, and it lingers for as long as that batch is busy; it is processed only once the batch
before it has committed, so commits stay in order. A fetch that overlapped a rebalance is dropped
whole: a rebalance resets the consumer's positions to the committed offsets, so its records come again.

Delivery is at-least-once. For each fetch:

0. the store is checked for lost data (generation marker, partition watermarks); what it lost is
   restored from the input topic before anything is forecast;
1. invalid messages, and any message whose handling fails, go to the dead-letter topic (original
   bytes, a ``reason`` header);
2. per symbol, bars whose ts is not after the last seen one (stored, or earlier in this fetch) are
   skipped and counted by reason (``replayed``, ``duplicate``, ``out_of_order``);
3. the remaining bars run in rounds (the k-th bar of every symbol in round k), each round one
   batched forecaster call on the model thread, so the event loop keeps heartbeating;
4. each round's forecasts are published and acknowledged by Kafka, *then* written to the state store;
5. only when all of that succeeded are the partitions' watermarks written and the offsets committed.

Every Kafka and Redis call is retried through an outage (:mod:`daemon.io.retry`), so an outage delays
the batch and never skips a step.

A crash anywhere before 5 replays the fetch; replayed bars get the same window, seed and model, hence
the same forecast id and numbers, and bars already stored are skipped as duplicates. A stop request
or a partition revocation cuts a fetch short between rounds: the offsets up to the first bar not
done are committed and the rest is fetched again (by this member or the partition's next owner).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

import structlog

from daemon.errors import CommitRefused
from daemon.io.bus import DeadLetters, InMessage, InputBus, OutputBus, Partition
from daemon.io.retry import Abandoned, Outages
from daemon.model.runner import ModelExecutor
from daemon.ops.metrics import Metrics
from daemon.pipeline.config import LoopConfig
from daemon.pipeline.context import LoopContext, PhaseClock
from daemon.pipeline.features import AbortsOpen, DropsSessions
from daemon.pipeline.intake import Fetched, Intake, Reading, read_bar
from daemon.pipeline.plan import Item, commit_offsets, eos_segments, plan_rounds, watermarks
from daemon.pipeline.round import RoundRunner
from daemon.state.base import StateStore, SymbolState
from daemon.state.cache import SymbolCache
from daemon.state.recovery import Recovery
from kronos_core.stream_types import StreamForecaster

log = structlog.get_logger("kronos.loop")


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
        runner: ModelExecutor,
        states: dict[str, SymbolState] | None = None,
        outages: Outages | None = None,
    ) -> None:
        """``runner``: the model thread; ``states``: the symbol cache's dict (the daemon's, so that model
        swaps read it without reaching into the loop)."""
        self._in = bus_in
        self._out = bus_out
        self._store = store
        self._forecaster = forecaster
        self._cfg = config
        self._metrics = metrics
        self._ctx = ctx = LoopContext(outages or Outages(), dead_letters)
        self._busy = asyncio.Lock()  # held while a fetch is processed; a revocation waits for it
        self._cache = SymbolCache(store, ctx, metrics.symbols_cached.set, states)
        self._recovery = Recovery(
            bus=bus_in, store=store, cache=self._cache, calls=ctx, metrics=metrics,
            read_bar=partial(read_bar, max_future_s=config.max_future_s),
            max_context=config.max_context, lookback_s=config.restore_lookback_s,
        )  # fmt: skip
        self._intake = Intake(bus_in, config, ctx, self._cache, metrics, self._busy)
        self._rounds = RoundRunner(
            bus_out=bus_out, store=store, forecaster=forecaster, cfg=config, ctx=ctx, cache=self._cache,
            intake=self._intake, metrics=metrics, runner=runner,
        )  # fmt: skip
        self.assignment_received = False

    @property
    def last_tick(self) -> float:
        """time.monotonic() when the loop last made progress (liveness)."""
        return self._ctx.last_tick

    @last_tick.setter
    def last_tick(self, value: float) -> None:
        self._ctx.last_tick = value

    @property
    def states(self) -> dict[str, SymbolState]:
        """The symbols held in memory (read-only use: smoke forecasts of a new model version)."""
        return self._cache.states

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch and process micro-batches until a stop is requested; the batch in flight finishes.

        Pipelined (``LoopConfig.pipeline``): the next fetch starts as a batch's processing starts, and
        is processed once that batch is committed.
        """
        ctx = self._ctx
        ahead: asyncio.Task[Fetched | None] | None = None
        free_at = 0.0  # when the last batch was done: a pipelined fetch's linger after it is overhead
        try:
            while not ctx.stopping:
                fetched = await (ahead if ahead is not None else self._intake.start())
                ahead = None
                ctx.tick()
                if fetched is None:
                    break
                if fetched.messages and fetched.revocations != ctx.revocations:
                    log.info(
                        "dropping a fetch that overlapped a rebalance; its records are fetched again "
                        "from the committed offsets",
                        size=len(fetched.messages),
                    )
                elif fetched.messages:
                    # No await between the fetch returning and taking the lock: a revocation that
                    # starts now waits until this batch is processed and committed.
                    async with self._busy:
                        if self._cfg.pipeline and not ctx.stopping:
                            ahead = self._intake.start()
                        ctx.clock = PhaseClock()
                        ctx.clock.seconds["linger"] = max(0.0, fetched.done_at - max(fetched.first_at, free_at))
                        await self._process_safely(fetched)
                        for phase, seconds in ctx.clock.seconds.items():
                            self._metrics.phases[phase].observe(seconds)
                    free_at = time.perf_counter()
                self._metrics.set_lag(self._in.lag())
        finally:
            if ahead is not None:  # stopping: its records are not committed, so they come again
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
        log.info("loop stopped", symbols=len(self._cache))

    def request_stop(self) -> None:
        """Stop taking work: a fetch waiting for a first record is interrupted; a batch in flight
        finishes its current round and commits what is done."""
        self._ctx.stopping = True
        self._intake.interrupt()

    async def _process_safely(self, fetched: Fetched) -> None:
        batch = fetched.messages
        try:
            await self.process(batch, fetched.readings)
        except Abandoned:
            # Stopping or revoked during an outage: the uncommitted rest is fetched again (same ids).
            log.warning("batch abandoned during an outage; it will be processed again", size=len(batch))
            if isinstance(self._out, AbortsOpen):  # exactly-once: the segment's transaction
                await self._out.abort_open()
        except CommitRefused as exc:
            # The group moved on without us; the new owner replays from the last commit.
            log.warning("commit refused after a rebalance; dropping cached state", error=str(exc))
            self._ctx.revocations += 1  # a fetch made meanwhile is dropped: its records come again
            self._drop(set(self._cache.owner.values()))

    async def process(self, batch: list[InMessage], readings: dict[int, Reading] | None = None) -> None:
        """One fetch, from validation to commit (exactly-once: segment by segment, see eos_segments).
        ``readings``: messages already read (by ``id``), as :func:`~daemon.pipeline.intake.read_message`
        gives them."""
        readings = readings if readings is not None else {}
        if not self._cfg.exactly_once:
            await self._process_part(batch, readings)
            return
        for segment in eos_segments(batch):
            await self._process_part(segment, readings)
            if self._ctx.cut:
                break  # the rest is not committed: fetched again

    async def _process_part(self, batch: list[InMessage], readings: dict[int, Reading]) -> None:
        fetched_at = time.time()
        owned = self._in.assignment()
        batch = [m for m in batch if m.tp in owned]  # revoked since the fetch: the new owner has them
        rounds = await self._take(batch, readings)
        done = 0
        for round_items in rounds:
            if self._ctx.cut and not self._cfg.exactly_once:
                break  # shutting down or giving partitions up: commit what is done, leave the rest
            await self._rounds.run(round_items, fetched_at)
            self._ctx.tick()
            done += 1
        await self._commit(batch, [msg for round_items in rounds[done:] for msg, _ in round_items])

    async def _take(self, batch: list[InMessage], readings: dict[int, Reading]) -> list[list[Item]]:
        """Check the store for lost state, validate, load the symbols' states, and plan the rounds (the
        bars that are not new are skipped; exactly-once re-publishes those of an aborted transaction)."""
        clock = self._ctx.clock
        with clock("check_state"):
            await self._recovery.check(batch)
        with clock("validate"):
            items = await self._intake.validate(batch, readings)
        self._metrics.bars_in.inc(len(items))  # valid bars; invalid ones count in kronos_invalid_messages
        with clock("load_state"):
            items = await self._cache.load(items)
            states = self._cache.states
            last_seen = {s: st.last_ts for s, st in states.items()}
            last_source = {s: st.source for s, st in states.items()}
            rounds, skipped = plan_rounds(items, last_seen, last_source)
            self._rounds.planned()
            await self._intake.skip(skipped)
        if self._cfg.exactly_once:
            await self._rounds.republish([item for item, reason in skipped if reason == "replayed"])
        return rounds

    async def _commit(self, batch: list[InMessage], left: list[InMessage]) -> None:
        """The partitions' watermarks, then the offsets: past the batch, or at its first bar not done."""
        ctx = self._ctx
        if left:
            log.info("batch cut short", bars_left=len(left), stopping=ctx.stopping, revoking=ctx.revoking)
        offsets = commit_offsets(batch, left)
        marks = watermarks(offsets)
        with ctx.clock("commit"):
            await ctx.io("redis", "writing watermarks", lambda: self._store.set_watermarks(marks))
            await ctx.io("kafka", "committing offsets", lambda: self._in.commit(offsets))

    # -- rebalance handler ------------------------------------------------------------------------

    async def on_revoked(self, partitions: set[Partition]) -> None:
        """Called before partitions go to another member: the batch in flight stops after its current
        round and commits what is done (while this member's generation is still valid); then the
        revoked symbols are forgotten (the next owner loads them from the store)."""
        self._ctx.revoking = True  # the batch in flight stops after its current round
        self._ctx.revocations += 1  # a fetch under way now is dropped: its records come again
        try:
            async with self._busy:
                dropped = self._drop(partitions)
                self._metrics.assigned_partitions.set(len(self._in.assignment() - partitions))
        finally:
            self._ctx.revoking = False
        if partitions:
            log.info("partitions revoked", partitions=sorted(map(tuple, partitions)), symbols_dropped=dropped)

    async def on_assigned(self, partitions: set[Partition]) -> None:
        self.assignment_received = True
        self._metrics.assigned_partitions.set(len(partitions))
        log.info("partitions assigned", partitions=sorted(map(tuple, partitions)))

    def _drop(self, partitions: set[Partition]) -> int:
        self._recovery.forget(partitions)
        symbols = self._cache.drop(partitions)
        if isinstance(self._forecaster, DropsSessions):  # warm model sessions (incremental mode)
            self._forecaster.drop(symbols)
        if self._cfg.challengers is not None:
            self._cfg.challengers.drop(symbols)
        scorer = self._cfg.scorer
        if scorer is not None and scorer.calibrator is not None:  # their calibration is read again from the store
            scorer.calibrator.forget(symbols)
        self._metrics.forget_partitions(partitions)
        return len(symbols)
