"""Intake: fetch a micro-batch, linger for the rest of a burst, and read (parse, check) its messages.

A fetch waits up to ``max_wait_ms`` for a first record, then lingers up to ``max_wait_ms`` more for
others (until ``max_batch_size``, or until no record came for ``linger_idle_ms``: the burst is over),
drawing from every assigned partition fairly, so the bars of a burst reach the model as one batch.
Messages are read (parsed, checked) as they arrive, while the linger goes on.

Pipelined, a fetch made while the batch before it is busy waits and lingers until that batch is done.
Invalid messages and bars that are not new go to the dead-letter topic (skipped bars only when
configured) and are counted by reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from daemon.errors import InvalidBar
from daemon.io.bus import InMessage, InputBus
from daemon.io.messages import Bar, check_bar_time, format_ts, parse_bar
from daemon.io.retry import Abandoned
from daemon.ops.metrics import Metrics
from daemon.pipeline.config import LoopConfig
from daemon.pipeline.context import LoopContext
from daemon.pipeline.plan import Item, Letter
from daemon.state.cache import SymbolCache

log = structlog.get_logger("kronos.loop")


# While the batch before is still busy, a pipelined fetch polls every 5 ms while records come in,
# backing off to 40 ms while none do (each poll takes the interpreter from the model thread).
_BUSY_POLL_MS = 5
_BUSY_POLL_MAX_MS = 40


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


def read_bar(msg: InMessage, now: float, max_future_s: float | None) -> Bar | None:
    """A retained message as a bar, or None when it is not a valid one (state restore)."""
    reading = read_message(msg, now, max_future_s)
    return reading if isinstance(reading, Bar) else None


class Intake:
    """Fetches (one at a time, pipelined or not), validation, and the bars skipped as not new."""

    def __init__(
        self, bus: InputBus, cfg: LoopConfig, ctx: LoopContext, cache: SymbolCache, metrics: Metrics,
        busy: asyncio.Lock,
    ) -> None:  # fmt: skip
        self._in = bus
        self._cfg = cfg
        self._ctx = ctx
        self._cache = cache
        self._metrics = metrics
        self._busy = busy  # held while a fetch is processed
        self._waiting = False  # a fetch waits for a first record (a stop request may interrupt it)
        self._task: asyncio.Task[Fetched | None] | None = None

    def start(self) -> asyncio.Task[Fetched | None]:
        """The next fetch, under way."""
        self._task = asyncio.create_task(self._fetch(), name="kronos-fetch")
        return self._task

    def interrupt(self) -> None:
        """A stop request: a fetch still waiting for a first record ends now (with None)."""
        if self._waiting and self._task is not None:
            self._task.cancel()

    async def _fetch(self) -> Fetched | None:
        """The next micro-batch, its messages read as they arrive; None when a stop interrupted it.

        While a batch is being processed (pipelined), it waits and lingers until that batch is done.
        """
        fetched = Fetched([], revocations=self._ctx.revocations)
        size, wait, idle = self._cfg.max_batch_size, self._cfg.max_wait_ms, self._cfg.linger_idle_ms
        busy = self._busy.locked
        max_future = self._cfg.max_future_s

        def read(messages: list[InMessage]) -> None:
            now = time.time()
            for m in messages:
                fetched.readings[id(m)] = read_message(m, now, max_future)

        self._waiting = True
        try:
            first: list[InMessage] = []
            while not first:
                first = await self._fetch_io(lambda: self._in.fetch(size, wait))
                if not busy():
                    break
            if not first:
                return fetched
            self._waiting = False  # records in hand: a stop request now lets the linger end by itself
            fetched.first_at = time.perf_counter()
            fetched.messages = await self._fetch_io(
                lambda: linger(self._in, first, size, wait, idle_ms=idle, busy=busy, on_records=read)
            )
            fetched.done_at = time.perf_counter()
            return fetched
        except Abandoned:
            return None
        except asyncio.CancelledError:
            if not self._ctx.stopping:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return None
        finally:
            self._waiting = False

    async def _fetch_io(self, fn: Callable[[], Awaitable[list[InMessage]]]) -> list[InMessage]:
        """A fetch, retried through an outage until the loop stops. It counts as the loop's progress
        (liveness) only while no batch is in process: a pipelined fetch must not hide a stuck model call."""
        ctx = self._ctx

        def tick() -> None:
            if not self._busy.locked():
                ctx.tick()

        return await ctx.outages.call("kafka", "fetching", fn, abandon=lambda: ctx.stopping, on_attempt=tick)

    async def validate(self, batch: list[InMessage], readings: dict[int, Reading]) -> list[Item]:
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
        await self._ctx.dead_letter(dead)
        return items

    async def skip(self, skipped: Sequence[tuple[Item, str]]) -> None:
        """Count skipped bars by reason; dead-letter duplicates and out-of-order bars when configured
        (``replayed`` ones were processed already: never)."""
        dead: list[Letter] = []
        for (msg, bar), reason in skipped:
            self._metrics.skipped.labels(reason).inc()
            log.info("bar skipped", reason=reason, symbol=bar.symbol, ts=bar.ts_ns, source=msg.source)
            if self._cfg.dead_letter_skipped and reason != "replayed":
                state = self._cache.states.get(bar.symbol)
                last = "?" if state is None or state.last_ts is None else format_ts(state.last_ts)
                text = f"skipped as {reason}: ts {format_ts(bar.ts_ns)} is not after {last}, the symbol's last bar"
                dead.append((msg, text, reason))
        await self._ctx.dead_letter(dead)
