"""The forecasting loop: fetch a micro-batch, validate, forecast round by round, publish, store, commit.

A fetch waits up to ``max_wait_ms`` for a first record, then lingers up to ``max_wait_ms`` more for
others (until ``max_batch_size``, or until no record came for ``linger_idle_ms``: the burst is over),
drawing from every assigned partition fairly, so the bars of a burst reach the model as one batch.
Messages are read (parsed, checked) as they arrive, while the linger goes on.

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
   batched forecaster call in a worker thread, so the event loop keeps heartbeating;
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
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
import structlog

from daemon.errors import CommitRefused, CorruptState, ForecasterError, InvalidBar
from daemon.io.bus import DeadLetters, InMessage, InputBus, OutputBus, Partition
from daemon.io.messages import (
    Bar,
    ForecastContext,
    build_forecast_message,
    check_bar_time,
    encode_json,
    format_ts,
    horizon_ns,
    infer_interval_ns,
    parse_bar,
)
from daemon.io.retry import Abandoned, Outages
from daemon.model.runner import ModelExecutor
from daemon.model.swap import pin_forecaster
from daemon.ops.metrics import LOOP_PHASES, Metrics
from daemon.pipeline.calendars import HorizonCalendar
from daemon.scoring.scorer import OnlineScorer
from daemon.state.base import StateStore, StateUpdate, SymbolState, merge_restored
from kronos_core.stream_types import SeriesForecast, SeriesWindow, StreamForecaster, derive_seed

log = structlog.get_logger("kronos.loop")

T = TypeVar("T")

Item = tuple[InMessage, Bar]
# Offsets a partition's first fetch may skip past the watermark without any loss: the commit markers
# of Kafka transactions take offsets too.
_WATERMARK_SLACK = 2
Letter = tuple[InMessage, str, str]  # a message for the dead-letter topic: message, reason, kind


@dataclass(frozen=True)
class LoopConfig:
    output_topic: str
    horizon: int
    max_batch_size: int = 256
    max_wait_ms: int = 20
    linger_idle_ms: int = 5  # the linger ends once no record came for this long; 0: never early
    pipeline: bool = True  # fetch and read the next batch while this one is processed
    default_interval_s: float = 60.0
    forecast_ttl_s: int | None = None
    base_seed: int = 0
    max_future_s: float | None = 300.0
    dead_letter_skipped: bool = False
    max_context: int = 512
    restore_lookback_s: float | None = None  # history read to restore lost state (None: all retained)
    calendar: HorizonCalendar | None = None  # horizon timestamps; None: continuous (24/7)
    scorer: OnlineScorer | None = None  # online scoring and band calibration (daemon/scoring/online.py)
    exactly_once: bool = False  # Kafka transactions: a fetch runs as segments, one transaction each
    challengers: Any = None  # shadow challengers (daemon/model/challengers.py ChallengerSet)


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


def eos_segments(batch: Sequence[InMessage]) -> list[list[InMessage]]:
    """Exactly-once: cut a fetch into segments in which no key repeats and each partition's messages
    follow on from the previous segment's. A segment is then one round, one transaction whose input
    offsets cover every message it sent a forecast or dead letter for, and which holds at most one
    bar per symbol (so after an abort, Redis's latest forecast of a symbol is the aborted one)."""
    segments: list[list[InMessage]] = []
    cursor: dict[Partition, int] = {}  # per partition: index of the segment its next message joins
    keys: list[set[bytes | None]] = []
    for m in batch:
        k = cursor.get(m.tp, 0)
        while k < len(segments) and m.key is not None and m.key in keys[k]:  # no key: dead-lettered
            k += 1
        if k == len(segments):
            segments.append([])
            keys.append(set())
        segments[k].append(m)
        keys[k].add(m.key)
        cursor[m.tp] = k
    return segments


Source = tuple[str, int, int]  # topic, partition, offset of the message that carried a bar


def skip_reason(msg: InMessage, ts_ns: int, last_ts: int | None, last_source: Source | None) -> str | None:
    """Why a bar is not new, or None when it is: its ts must be after the symbol's last processed ts.

    ``replayed``: the message is the one that carried the last processed bar, or an earlier one of the
    same partition (offsets went back: a crash before the commit, a rebalance, a reset), so it was
    processed already. Otherwise ``duplicate`` (same ts) or ``out_of_order`` (earlier ts): a new
    message whose bar is not newer.
    """
    if last_ts is None or ts_ns > last_ts:
        return None
    if last_source is not None and last_source[:2] == (msg.topic, msg.partition) and msg.offset <= last_source[2]:
        return "replayed"
    return "duplicate" if ts_ns == last_ts else "out_of_order"


def plan_rounds(
    items: Sequence[Item],
    last_seen: dict[str, int | None],
    last_source: dict[str, Source | None] | None = None,
) -> tuple[list[list[Item]], list[tuple[Item, str]]]:
    """Split a fetch's valid bars into rounds and skipped bars.

    A bar whose ts is not after the symbol's last seen ts (``last_seen``, then earlier bars of this
    fetch) is skipped by :func:`skip_reason` (``last_source``: the message of each symbol's last
    processed bar). Round k holds the k-th remaining bar of every symbol, so each symbol's bars are
    forecast in order.
    """
    last = dict(last_seen)
    sources: dict[str, Source | None] = dict(last_source or {})
    queues: dict[str, list[Item]] = {}
    skipped: list[tuple[Item, str]] = []
    for item in items:
        msg, bar = item
        reason = skip_reason(msg, bar.ts_ns, last.get(bar.symbol), sources.get(bar.symbol))
        if reason is not None:
            skipped.append((item, reason))
            continue
        last[bar.symbol] = bar.ts_ns
        sources[bar.symbol] = (msg.topic, msg.partition, msg.offset)
        queues.setdefault(bar.symbol, []).append(item)
    depth = max((len(q) for q in queues.values()), default=0)
    rounds = [[q[k] for q in queues.values() if len(q) > k] for k in range(depth)]
    return rounds, skipped


# While the batch before is still busy, a pipelined fetch polls every 5 ms while records come in,
# backing off to 40 ms while none do (each poll takes the interpreter from the model thread).
_BUSY_POLL_MS = 5
_BUSY_POLL_MAX_MS = 40
# Forecasts encoded before the producer is given them (it sends while the next ones are encoded).
_PUBLISH_CHUNK = 64


async def fetch_lingering(
    bus: InputBus, max_records: int, wait_ms: int, linger_ms: int, idle_ms: int = 0
) -> list[InMessage]:
    """Wait up to ``wait_ms`` for a first record, then :func:`linger`: the bars of a burst then reach
    the model as one batch, not one fetch apiece."""
    return await linger(bus, await bus.fetch(max_records, wait_ms), max_records, linger_ms, idle_ms=idle_ms)


async def linger(
    bus: InputBus,
    batch: list[InMessage],
    max_records: int,
    linger_ms: int,
    *,
    idle_ms: int = 0,
    busy: Callable[[], bool] | None = None,
    on_records: Callable[[list[InMessage]], None] | None = None,
) -> list[InMessage]:
    """After a first fetch returned ``batch``, fetch more into it until ``max_records``, for up to
    ``linger_ms``; the linger ends early when ``idle_ms`` (> 0) passed without a record, and lasts
    past ``linger_ms`` for as long as ``busy()`` (the batch before is still being processed, so
    nothing would start earlier). ``on_records`` sees every fetched group of records (the first too).

    ``batch`` is extended in place, so a caller that retries after an error keeps what was fetched.
    """
    if on_records is not None and batch:
        on_records(batch)
    deadline = time.monotonic() + linger_ms / 1e3
    poll_ms = _BUSY_POLL_MS
    while batch and len(batch) < max_records:
        waiting = busy is not None and busy()
        if waiting:
            wait_ms = poll_ms
        else:
            wait_ms = int((deadline - time.monotonic()) * 1e3)
            if wait_ms <= 0:
                break
            if idle_ms > 0:
                wait_ms = min(wait_ms, idle_ms)
        got = await bus.fetch(max_records - len(batch), wait_ms)
        poll_ms = _BUSY_POLL_MS if got else min(2 * poll_ms, _BUSY_POLL_MAX_MS)
        if got:
            if on_records is not None:
                on_records(got)
            batch += got
        elif idle_ms > 0 and not waiting:
            break  # quiet for idle_ms: the burst is over
    return batch


Reading = Bar | tuple[str, str]  # a valid bar, or why the message is dead-lettered: (reason, kind)


def read_message(msg: InMessage, now: float, max_future_s: float | None) -> Reading:
    """One message as a bar, or the reason and kind its dead letter gets (never raises)."""
    if msg.error is not None:  # stands in for a record or record batch that could not be decoded
        return msg.error, "undecodable"
    try:
        bar = parse_bar(msg.key, msg.value)
        check_bar_time(bar, msg.timestamp_ms, now, max_future_s)
        return bar
    except InvalidBar as exc:
        return exc.reason, exc.kind
    except Exception as exc:
        return f"reading the message failed: {type(exc).__name__}: {exc}", "error"


@dataclass
class Fetched:
    """A fetched batch: its messages, each one's reading (by ``id``), and the count of revocations
    when the fetch began (a fetch that overlapped one is dropped)."""

    messages: list[InMessage]
    readings: dict[int, Reading] = field(default_factory=dict)
    revocations: int = 0
    first_at: float = 0.0  # time.perf_counter() when the first records were in hand
    done_at: float = 0.0  # ... and when the linger ended


class PhaseClock:
    """Seconds spent per loop phase (daemon.metrics.LOOP_PHASES) while one fetch is processed."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(LOOP_PHASES, 0.0)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0


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
        outages: Outages | None = None,
    ) -> None:
        self._in = bus_in
        self._out = bus_out
        self._dead = dead_letters
        self._store = store
        self._forecaster = forecaster
        self._cfg = config
        self._metrics = metrics
        self._outages = outages or Outages()
        self._states: dict[str, SymbolState] = {}  # owned symbols, loaded from the store on first sight
        self._owner: dict[str, Partition] = {}  # symbol -> the input partition it arrives on
        self._busy = asyncio.Lock()  # held while a fetch is processed; a revocation waits for it
        self._generation: str | None = None  # the store's generation marker when last seen
        self._checked: set[Partition] = set()  # partitions checked for lost state since assigned
        self._partial: set[Partition] = set()  # partitions restored from a history missing older bars
        self._executor = ModelExecutor()  # the stream first; on-demand forecasts when it waits for nothing
        self._stopping = False
        self._revoking = False
        self._in_fetch = False  # a fetch waits for a first record (a stop request may interrupt it)
        self._fetch_task: asyncio.Task[Fetched | None] | None = None
        self._revocations = 0  # revocations so far: a fetch that overlapped one is dropped
        self._clock = PhaseClock()  # the fetch in process's phase times
        self.last_tick = time.monotonic()
        self.assignment_received = False

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch and process micro-batches until a stop is requested; the batch in flight finishes.

        Pipelined (``LoopConfig.pipeline``): the next fetch starts as a batch's processing starts, and
        is processed once that batch is committed.
        """
        ahead: asyncio.Task[Fetched | None] | None = None
        free_at = 0.0  # when the last batch was done: a pipelined fetch's linger after it is overhead
        try:
            while not self._stopping:
                fetched = await (ahead if ahead is not None else self._start_fetch())
                ahead = None
                self._tick()
                if fetched is None:
                    break
                if fetched.messages and fetched.revocations != self._revocations:
                    log.info(
                        "dropping a fetch that overlapped a rebalance; its records are fetched again "
                        "from the committed offsets",
                        size=len(fetched.messages),
                    )
                elif fetched.messages:
                    # No await between the fetch returning and taking the lock: a revocation that
                    # starts now waits until this batch is processed and committed.
                    async with self._busy:
                        if self._cfg.pipeline and not self._stopping:
                            ahead = self._start_fetch()
                        self._clock = PhaseClock()
                        self._clock.seconds["linger"] = max(0.0, fetched.done_at - max(fetched.first_at, free_at))
                        await self._process_safely(fetched)
                        for phase, seconds in self._clock.seconds.items():
                            self._metrics.phases[phase].observe(seconds)
                    free_at = time.perf_counter()
                self._metrics.set_lag(self._in.lag())
        finally:
            if ahead is not None:  # stopping: its records are not committed, so they come again
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
        log.info("loop stopped", symbols=len(self._states))

    def request_stop(self) -> None:
        """Stop taking work: a fetch waiting for a first record is interrupted; a batch in flight
        finishes its current round and commits what is done."""
        self._stopping = True
        if self._in_fetch and self._fetch_task is not None:
            self._fetch_task.cancel()

    def _start_fetch(self) -> asyncio.Task[Fetched | None]:
        self._fetch_task = asyncio.create_task(self._fetch(), name="kronos-fetch")
        return self._fetch_task

    async def _fetch(self) -> Fetched | None:
        """The next micro-batch, its messages read as they arrive; None when a stop interrupted it.

        While a batch is being processed (pipelined), it waits and lingers until that batch is done.
        """
        fetched = Fetched([], revocations=self._revocations)
        size, wait, idle = self._cfg.max_batch_size, self._cfg.max_wait_ms, self._cfg.linger_idle_ms
        busy = self._busy.locked
        max_future = self._cfg.max_future_s

        def read(messages: list[InMessage]) -> None:
            now = time.time()
            for m in messages:
                fetched.readings[id(m)] = read_message(m, now, max_future)

        self._in_fetch = True
        try:
            first: list[InMessage] = []
            while not first:
                first = await self._fetch_io(lambda: self._in.fetch(size, wait))
                if not busy():
                    break
            if not first:
                return fetched
            self._in_fetch = False  # records in hand: a stop request now lets the linger end by itself
            fetched.first_at = time.perf_counter()
            fetched.messages = await self._fetch_io(
                lambda: linger(self._in, first, size, wait, idle_ms=idle, busy=busy, on_records=read)
            )
            fetched.done_at = time.perf_counter()
            return fetched
        except Abandoned:
            return None
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return None
        finally:
            self._in_fetch = False

    def _tick(self) -> None:
        self.last_tick = time.monotonic()

    async def _io(self, service: str, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """A call to Kafka or Redis, retried through an outage; given up (:class:`Abandoned`) when the
        loop stops or its partitions are revoked meanwhile (nothing more of the batch is committed)."""
        return await self._outages.call(
            service, what, fn, abandon=lambda: self._stopping or self._revoking, on_attempt=self._tick
        )

    async def _fetch_io(self, fn: Callable[[], Awaitable[list[InMessage]]]) -> list[InMessage]:
        """A fetch, retried through an outage until the loop stops. It counts as the loop's progress
        (liveness) only while no batch is in process: a pipelined fetch must not hide a stuck model call."""

        def tick() -> None:
            if not self._busy.locked():
                self._tick()

        return await self._outages.call("kafka", "fetching", fn, abandon=lambda: self._stopping, on_attempt=tick)

    async def _process_safely(self, fetched: Fetched) -> None:
        batch = fetched.messages
        try:
            await self.process(batch, fetched.readings)
        except Abandoned:
            # Stopping or revoked during an outage: the uncommitted rest is fetched again (same ids).
            log.warning("batch abandoned during an outage; it will be processed again", size=len(batch))
            abort = getattr(self._out, "abort_open", None)  # exactly-once: the segment's transaction
            if callable(abort):
                await abort()
        except CommitRefused as exc:
            # The group moved on without us; the new owner replays from the last commit.
            log.warning("commit refused after a rebalance; dropping cached state", error=str(exc))
            self._revocations += 1  # a fetch made meanwhile is dropped: its records come again
            self._drop(set(self._owner.values()))

    async def process(self, batch: list[InMessage], readings: dict[int, Reading] | None = None) -> None:
        """One fetch, from validation to commit (exactly-once: segment by segment, see eos_segments).
        ``readings``: messages already read (by ``id``), as :func:`read_message` gives them."""
        readings = readings if readings is not None else {}
        if not self._cfg.exactly_once:
            await self._process_part(batch, readings)
            return
        for segment in eos_segments(batch):
            await self._process_part(segment, readings)
            if self._stopping or self._revoking:
                break  # the rest is not committed: fetched again

    async def _process_part(self, batch: list[InMessage], readings: dict[int, Reading]) -> None:
        fetched_at = time.time()
        clock = self._clock
        owned = self._in.assignment()
        batch = [m for m in batch if m.tp in owned]  # revoked since the fetch: the new owner has them
        with clock("check_state"):
            await self._check_lost_state(batch)
        with clock("validate"):
            items = await self._validate(batch, readings)
        self._metrics.bars_in.inc(len(items))  # valid bars; invalid ones count in kronos_invalid_messages
        with clock("load_state"):
            items = await self._load_states(items)
            last_seen = {s: st.last_ts for s, st in self._states.items()}
            last_source = {s: st.source for s, st in self._states.items()}
            rounds, skipped = plan_rounds(items, last_seen, last_source)
            await self._skip(skipped)
        if self._cfg.exactly_once:
            await self._republish([item for item, reason in skipped if reason == "replayed"])
        done = 0
        for round_items in rounds:
            if (self._stopping or self._revoking) and not self._cfg.exactly_once:
                break  # shutting down or giving partitions up: commit what is done, leave the rest
            await self._forecast_round(round_items, fetched_at)
            self._tick()
            done += 1
        left = [msg for round_items in rounds[done:] for msg, _ in round_items]
        if left:
            log.info("batch cut short", bars_left=len(left), stopping=self._stopping, revoking=self._revoking)
        offsets = commit_offsets(batch, left)
        marks = {f"{p.topic}/{p.partition}": off - 1 for p, off in offsets.items() if off > 0}
        with clock("commit"):
            await self._io("redis", "writing watermarks", lambda: self._store.set_watermarks(marks))
            await self._io("kafka", "committing offsets", lambda: self._in.commit(offsets))

    async def _validate(self, batch: list[InMessage], readings: dict[int, Reading]) -> list[Item]:
        """Valid bars, in order; invalid messages go to the dead-letter topic (acknowledged).

        Any error while reading one message, expected (:class:`InvalidBar`) or not, stays with that
        message: it is dead-lettered with the reason and the batch goes on. ``readings``: messages
        read already (as they were fetched); the others are read now.
        """
        items: list[Item] = []
        dead: list[Letter] = []
        now = time.time()
        for msg in batch:
            reading = readings.get(id(msg))
            if reading is None:
                reading = read_message(msg, now, self._cfg.max_future_s)
            if isinstance(reading, Bar):
                items.append((msg, reading))
                continue
            reason, kind = reading
            if kind in ("error", "undecodable"):
                log.error("message failed; dead-lettering it", source=msg.source, error=reason)
            else:
                log.warning("invalid message", reason=reason, kind=kind, source=msg.source)
            dead.append((msg, reason, kind))
        await self._dead_letter(dead)
        return items

    # -- lost state --------------------------------------------------------------------------------

    async def _check_lost_state(self, batch: Sequence[InMessage]) -> None:
        """Notice that the store lost data, and restore what it lost before anything is forecast.

        Two markers an empty Redis lacks: the generation token (it changes when Redis comes back
        empty under a running daemon) and the per-partition watermark (the offset of the last message
        whose state was written; it must reach the committed offset, which is where a partition's
        first fetch after its assignment starts). A partition whose watermark falls short is restored
        from its own retained bars up to that offset.
        """
        generation = await self._io("redis", "reading the state generation", self._store.generation)
        if self._generation is not None and generation != self._generation:
            log.error(
                "the state store lost its data (its generation marker changed); restoring every symbol",
                symbols_in_memory=len(self._states),
            )
            self._metrics.state_lost.inc()
            self._checked.clear()  # the watermarks went too: every partition is checked again
        self._generation = generation
        firsts: dict[Partition, int] = {}
        for m in batch:
            firsts[m.tp] = min(firsts.get(m.tp, m.offset), m.offset)
        unchecked = {p: o for p, o in firsts.items() if p not in self._checked}
        if not unchecked:
            return
        marks = await self._io("redis", "reading watermarks", self._store.watermarks)
        for p, first in sorted(unchecked.items()):
            mark = marks.get(f"{p.topic}/{p.partition}")
            if first > 0 and (mark is None or mark < first - 1 - _WATERMARK_SLACK):
                log.warning(
                    "state of a partition is missing from the store; restoring it from the input topic",
                    partition=f"{p.topic}/{p.partition}", watermark=mark, first_offset=first,
                )  # fmt: skip
                await self._restore_partition(p, first)
            self._checked.add(p)

    async def _restore_partition(self, partition: Partition, end_offset: int) -> None:
        """Rebuild each symbol of ``partition`` from its retained bars before ``end_offset`` (or from
        memory, for symbols this daemon holds), merged with what the store still has."""
        cap = self._cfg.max_context
        built: dict[str, SymbolState] = {}
        now = time.time()

        def sink(messages: list[InMessage]) -> None:
            self._tick()  # a long read is progress, not a stuck loop (liveness)
            for m in messages:
                bar = read_message(m, now, self._cfg.max_future_s)
                if not isinstance(bar, Bar):
                    continue  # dead-lettered when it was first consumed
                state = built.get(bar.symbol)
                if state is None:
                    state = built[bar.symbol] = SymbolState(bar.symbol, cap)
                if state.last_ts is None or bar.ts_ns > state.last_ts:
                    state.append(bar, None, "", m.source)

        async def read() -> int:
            built.clear()
            return await self._in.read_history(partition, end_offset, since_ms, sink)

        lookback = self._cfg.restore_lookback_s
        since_ms = None if lookback is None else int((now - lookback) * 1e3)
        start = await self._io("kafka", "reading retained bars", read)
        for symbol, state in self._states.items():  # what this daemon holds is complete
            if self._owner.get(symbol) == partition:
                built[symbol] = state
        if start > 0:
            self._partial.add(partition)
        for symbol, state in built.items():
            if symbol not in self._states:
                state.complete = start == 0 or len(state) >= cap
        symbols = sorted(built)
        stored = await self._io("redis", "loading state", lambda: self._store.load(symbols))
        writes = []
        for symbol in symbols:
            merged = merge_restored(built[symbol], stored[symbol])
            if merged is not None:
                writes.append((merged, stored[symbol].last_ts))
        written = await self._io("redis", "restoring state", lambda: self._store.restore(writes))
        for symbol in written:
            if symbol not in self._states or self._owner.get(symbol) != partition:
                self._states.pop(symbol, None)  # loaded again from the store when it comes up
        self._metrics.state_restored.inc(len(written))
        log.info(
            "state restored from the input topic",
            partition=f"{partition.topic}/{partition.partition}", from_offset=start, to_offset=end_offset,
            symbols=len(written), incomplete=sum(not st.complete for st, _ in writes),
        )  # fmt: skip

    def _error_letter(self, msg: InMessage, doing: str, exc: BaseException) -> Letter:
        reason = f"{doing} failed: {type(exc).__name__}: {exc}"
        log.error("message failed; dead-lettering it", source=msg.source, error=reason)
        return msg, reason, "error"

    async def _dead_letter(self, letters: Sequence[Letter]) -> None:
        """Send dead letters (acknowledged), retrying through a broker outage only those not sent yet."""
        pending = list(letters)

        async def attempt() -> None:
            results = await asyncio.gather(*(self._dead.send(*x) for x in pending), return_exceptions=True)
            pending[:] = [x for x, r in zip(pending, results, strict=True) if isinstance(r, BaseException)]
            for r in results:
                if isinstance(r, BaseException):
                    raise r

        if pending:
            await self._io("kafka", "dead-lettering", attempt)

    async def _skip(self, skipped: Sequence[tuple[Item, str]]) -> None:
        """Count skipped bars by reason; dead-letter duplicates and out-of-order bars when configured
        (``replayed`` ones were processed already: never)."""
        dead: list[Letter] = []
        for (msg, bar), reason in skipped:
            self._metrics.skipped.labels(reason).inc()
            log.info("bar skipped", reason=reason, symbol=bar.symbol, ts=bar.ts_ns, source=msg.source)
            if self._cfg.dead_letter_skipped and reason != "replayed":
                state = self._states.get(bar.symbol)
                last = "?" if state is None or state.last_ts is None else format_ts(state.last_ts)
                text = f"skipped as {reason}: ts {format_ts(bar.ts_ns)} is not after {last}, the symbol's last bar"
                dead.append((msg, text, reason))
        await self._dead_letter(dead)

    async def _load(self, symbols: list[str]) -> tuple[dict[str, SymbolState], dict[str, str]]:
        """Load symbols; when one's record is unreadable, the others one by one: (states, corrupt)."""
        try:
            return await self._io("redis", "loading state", lambda: self._store.load(symbols)), {}
        except CorruptState:
            pass
        states: dict[str, SymbolState] = {}
        corrupt: dict[str, str] = {}
        for symbol in symbols:
            one = [symbol]
            try:
                states.update(await self._io("redis", "loading state", partial(self._store.load, one)))
            except CorruptState as exc:
                corrupt[symbol] = str(exc)
        return states, corrupt

    async def _load_states(self, items: Sequence[Item]) -> list[Item]:
        """Load from the store the symbols seen for the first time since their partition was assigned;
        the items whose symbol could be loaded."""
        missing = sorted({bar.symbol for _, bar in items if bar.symbol not in self._states})
        if missing:
            loaded, corrupt = await self._load(missing)
            if corrupt:  # those symbols' bars are dead-lettered; the others go on
                letters = [(m, f"{corrupt[b.symbol]}", "state") for m, b in items if b.symbol in corrupt]
                for msg, reason, _ in letters:
                    log.error("stored state unreadable; dead-lettering the bar", source=msg.source, error=reason)
                await self._dead_letter(letters)
                items = [(m, b) for m, b in items if b.symbol not in corrupt]
            for msg, bar in items:  # a symbol new to the store, on a partition restored only in part
                state = loaded.get(bar.symbol)
                if state is not None and state.last_ts is None and msg.tp in self._partial:
                    state.complete = False
            self._states.update(loaded)
            self._metrics.symbols_cached.set(len(self._states))
        for msg, bar in items:
            self._owner[bar.symbol] = msg.tp
        return list(items)

    async def _forecast_round(self, items: list[Item], fetched_at: float) -> None:
        """One batched model call; publish (acknowledged), then store, the round's forecasts."""
        clock = self._clock
        with clock("windows"):
            items = await self._still_new(items)
            if not items:
                return
            forecaster = pin_forecaster(self._forecaster)  # one model version for the whole call
            version = forecaster.model_version
            windows, contexts, ready = [], [], []
            dead: list[Letter] = []
            for item in items:
                try:
                    window, ctx = self._window(item[0], item[1], version, fetched_at)
                except Exception as exc:  # this bar cannot be made into a window: it alone is dead-lettered
                    dead.append(self._error_letter(item[0], "building the forecast window", exc))
                    continue
                windows.append(window)
                contexts.append(ctx)
                ready.append(item)
            items = ready

        with clock("model"):
            results = await self._run_model(forecaster, windows, contexts) if windows else []
        scorer = self._cfg.scorer
        # Kafka first, Redis second. Were Redis written first, a crash between the two would leave
        # the bar's ts in Redis: the replayed bar would then be skipped as a duplicate and its
        # forecast would never reach the output topic. This way a replay at worst publishes the
        # same forecast (same id) twice. The round's forecasts go out in chunks while the rest are
        # still being encoded (a round holds one bar per symbol, so their order does not matter);
        # nothing is stored before every chunk is acknowledged.
        sending: list[asyncio.Task[None]] = []
        try:
            with clock("encode"):
                if scorer is not None:
                    await scorer.adjust(windows, results, version, contexts)
                publish: list[tuple[Item, SeriesForecast, bytes, ForecastContext]] = []
                chunk: list[tuple[bytes | None, bytes | None]] = []
                for item, ctx, result in zip(items, contexts, results, strict=True):
                    try:
                        if isinstance(result, Exception):
                            raise result
                        record = build_forecast_message(ctx, result, version, forecaster.mode, time.time())
                        value = encode_json(record)
                    except Exception as exc:  # a model failure for one series: dead-letter that bar only
                        reason = f"forecast failed: {type(exc).__name__}: {exc}"
                        log.error(
                            "forecast failed", symbol=ctx.symbol, ts=ctx.ts_ns, source=item[0].source, error=reason
                        )
                        dead.append((item[0], reason, "forecast"))
                        continue
                    publish.append((item, result, value, ctx))
                    chunk.append((item[1].symbol.encode(), value))
                    if len(chunk) == _PUBLISH_CHUNK:
                        sending.append(asyncio.create_task(self._publish(chunk)))
                        chunk = []
                        await asyncio.sleep(0)  # the producer sends this chunk while the next is encoded
                if chunk:
                    sending.append(asyncio.create_task(self._publish(chunk)))
            with clock("publish"):
                await asyncio.gather(*sending)
                await self._dead_letter(dead)
        finally:
            for task in sending:  # one chunk failed (or the loop is stopping): the others stop too
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)
        with clock("store"):
            updates = [
                StateUpdate(bar, result.token_state, value, version, msg.source)
                for (msg, bar), result, value, _ in publish
            ]
            ttl = self._cfg.forecast_ttl_s
            refused = set(await self._io("redis", "storing state", lambda: self._store.apply(updates, ttl)))
            now = time.time()
            for (msg, bar), result, _, ctx in publish:
                if bar.symbol in refused:
                    continue
                self._states[bar.symbol].append(bar, result.token_state, version, msg.source)
                self._metrics.forecasts_out.inc()
                self._metrics.latency_from_bar.observe(max(0.0, now - bar.ts_ns / 1e9))
                self._metrics.latency_from_consume.observe(max(0.0, now - ctx.fetched_at))
        if scorer is not None:
            with clock("scoring"):
                window_of = dict(zip(map(id, results), windows, strict=True))
                stored = [(self._states[bar.symbol], window_of[id(result)], result)
                          for (_, bar), result, _, _ in publish if bar.symbol not in refused]  # fmt: skip
                await scorer.stored(stored, version)
        if self._cfg.challengers is not None:  # the challengers' forecasts of this round: scored, never served
            with clock("scoring"):
                done = [(self._states[b.symbol], ctx) for (_, b), _, _, ctx in publish if b.symbol not in refused]
                await self._cfg.challengers.after_round(done, forecaster.mode)
        if refused:
            # Another writer got there first (a stale owner, or a retried write): reload next time.
            self._metrics.state_conflicts.inc(len(refused))
            log.warning("state store holds newer bars; reloading those symbols", symbols=sorted(refused))
            for s in refused:
                self._states.pop(s, None)

    async def _publish(self, records: list[tuple[bytes | None, bytes | None]]) -> None:
        """Forecasts to the output topic, acknowledged (retried through an outage)."""
        await self._io("kafka", "publishing forecasts", lambda: self._out.send_batch(self._cfg.output_topic, records))

    async def _republish(self, replayed: list[Item]) -> None:
        """Exactly-once: a replayed bar that Redis already holds *from this very message* had its
        transaction aborted after the Redis write; publish its stored forecast again (same bytes) in
        this transaction. A true duplicate (another message with the same ts) stays skipped."""
        records = []
        for msg, bar in replayed:
            state = self._states.get(bar.symbol)
            if state is None or state.source != (msg.topic, msg.partition, msg.offset):
                continue  # an earlier message: committed in an earlier transaction
            stored = await self._io(
                "redis", "reading a stored forecast", partial(self._store.forecast_from, bar.symbol, msg.source)
            )
            if stored is not None:
                records.append((bar.symbol.encode(), stored))
        if records:
            log.info("re-publishing forecasts of an aborted transaction", count=len(records))
            await self._io(
                "kafka", "re-publishing forecasts", lambda: self._out.send_batch(self._cfg.output_topic, records)
            )

    async def _still_new(self, items: list[Item]) -> list[Item]:
        """Reload symbols the store refused earlier in this fetch and drop bars that are no longer new."""
        items = await self._load_states(items)
        fresh, skipped = [], []
        for item in items:
            state = self._states[item[1].symbol]
            reason = skip_reason(item[0], item[1].ts_ns, state.last_ts, state.source)
            if reason is None:
                fresh.append(item)
            else:
                skipped.append((item, reason))
        await self._skip(skipped)
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
        ctx.context_complete = state.complete or len(ts_list) >= self._cfg.max_context
        ctx.context_first_ns = ts_list[0]
        return window, ctx

    async def _run_model(
        self, forecaster: StreamForecaster, windows: list[SeriesWindow], contexts: list[ForecastContext]
    ) -> list[SeriesForecast | Exception]:
        """The batched call off the event loop; if it fails, each series alone, to isolate the culprit."""
        loop = asyncio.get_running_loop()
        started = time.time()
        shadow = self._cfg.challengers
        try:
            if shadow is None or not shadow.active:
                if shadow is not None:
                    shadow.begin_round(None)
                results: list[SeriesForecast | Exception] = list(
                    await loop.run_in_executor(self._executor, self._call_model, forecaster, windows)
                )
            else:  # the champion's forecasts come back as soon as they are made, before the challengers'
                early = shadow.begin_round(loop)
                job = loop.run_in_executor(self._executor, self._call_model, forecaster, windows)
                results = list(await shadow.champion_results(early, job))
        except Exception as exc:
            log.warning(
                "batched forecast failed; retrying series one by one", size=len(windows), error=repr(exc)
            )
            results = []
            for window in windows:
                try:
                    results.extend(
                        await loop.run_in_executor(self._executor, self._call_model, forecaster, [window])
                    )
                except Exception as one:
                    results.append(one)
        elapsed = time.time() - started
        self._metrics.model_step.observe(elapsed)
        self._metrics.batch_size.observe(len(windows))
        for ctx in contexts:
            ctx.model_started_at = started
            ctx.model_ms = elapsed * 1e3
        return results

    def _call_model(self, forecaster: StreamForecaster, windows: list[SeriesWindow]) -> list[SeriesForecast]:
        results = list(forecaster.forecast(windows, self._cfg.horizon))
        stats = getattr(forecaster, "last_stats", None)  # the engine's forecaster: how it served them
        for served in ("warm", "rebuilt", "refreshed"):
            count = getattr(stats, f"series_{served}", 0)
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
            self._cfg.challengers.forecast_in_job(windows, self._cfg.horizon)
        return results

    async def on_model_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model thread, between model calls (on CUDA one thread does all the work)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @property
    def model_executor(self) -> ModelExecutor:
        """The model thread (on-demand forecasts share it: daemon/pipeline/ondemand.py)."""
        return self._executor

    @property
    def states(self) -> dict[str, SymbolState]:
        """The symbols held in memory (read-only use: smoke forecasts of a new model version)."""
        return self._states

    # -- rebalance handler ------------------------------------------------------------------------

    async def on_revoked(self, partitions: set[Partition]) -> None:
        """Called before partitions go to another member: the batch in flight stops after its current
        round and commits what is done (while this member's generation is still valid); then the
        revoked symbols are forgotten (the next owner loads them from the store)."""
        self._revoking = True  # the batch in flight stops after its current round
        self._revocations += 1  # a fetch under way now is dropped: its records come again
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
        self._checked -= partitions
        self._partial -= partitions
        symbols = [s for s, p in self._owner.items() if p in partitions]
        for s in symbols:
            self._owner.pop(s, None)
            self._states.pop(s, None)
        forget = getattr(self._forecaster, "drop", None)  # warm model sessions (incremental mode)
        if callable(forget):
            forget(symbols)
        if self._cfg.challengers is not None:
            self._cfg.challengers.drop(symbols)
        scorer = self._cfg.scorer
        if scorer is not None and scorer.calibrator is not None:  # their calibration is read again from the store
            scorer.calibrator.forget(symbols)
        self._metrics.forget_partitions(partitions)
        self._metrics.symbols_cached.set(len(self._states))
        return len(symbols)

    def close(self) -> None:
        """Release the model thread (a call in progress finishes in the background)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
