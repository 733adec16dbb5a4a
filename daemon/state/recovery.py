"""Lost-state detection and restore: before a fetch is forecast, notice that the store lost data and
rebuild what it lost from the input topic's retained bars.

Two markers an empty Redis lacks: the generation token (it changes when Redis comes back empty under a
running daemon) and the per-partition watermark (the offset of the last message whose state was
written; it must reach the committed offset, which is where a partition's first fetch after its
assignment starts). A partition whose watermark falls short is restored from its own retained bars up
to that offset.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import structlog

from daemon.io.bus import InMessage, InputBus, Partition
from daemon.io.messages import Bar
from daemon.state.base import StateStore, SymbolState, merge_restored
from daemon.state.cache import Calls, SymbolCache

if TYPE_CHECKING:
    from daemon.ops.metrics import Metrics

log = structlog.get_logger("kronos.loop")

# Offsets a partition's first fetch may skip past the watermark without any loss: the commit markers
# of Kafka transactions take offsets too.
_WATERMARK_SLACK = 2


class RecoveryCalls(Calls, Protocol):
    def tick(self) -> None:
        """A long read is progress, not a stuck loop (liveness)."""


class Recovery:
    """Checks each fetch's partitions against the store's markers; restores the partitions it lost."""

    def __init__(
        self,
        *,
        bus: InputBus,
        store: StateStore,
        cache: SymbolCache,
        calls: RecoveryCalls,
        metrics: Metrics,
        read_bar: Callable[[InMessage, float], Bar | None],
        max_context: int,
        lookback_s: float | None,
    ) -> None:
        self._in = bus
        self._store = store
        self._cache = cache
        self._calls = calls
        self._metrics = metrics
        self._read_bar = read_bar  # a retained message as a bar, None when it is invalid
        self._cap = max_context
        self._lookback_s = lookback_s  # history read to restore lost state (None: all retained)
        self._generation: str | None = None  # the store's generation marker when last seen
        self._checked: set[Partition] = set()  # partitions checked for lost state since assigned

    def forget(self, partitions: set[Partition]) -> None:
        """Partitions revoked: checked again when assigned again."""
        self._checked -= partitions

    async def check(self, batch: Sequence[InMessage]) -> None:
        """Notice that the store lost data, and restore what it lost before anything is forecast."""
        io = self._calls.io
        generation = await io("redis", "reading the state generation", self._store.generation)
        if self._generation is not None and generation != self._generation:
            log.error(
                "the state store lost its data (its generation marker changed); restoring every symbol",
                symbols_in_memory=len(self._cache),
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
        marks = await io("redis", "reading watermarks", self._store.watermarks)
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
        cap = self._cap
        held, owner = self._cache.states, self._cache.owner
        built: dict[str, SymbolState] = {}
        now = time.time()

        def sink(messages: list[InMessage]) -> None:
            self._calls.tick()  # a long read is progress, not a stuck loop (liveness)
            for m in messages:
                bar = self._read_bar(m, now)
                if bar is None:
                    continue  # dead-lettered when it was first consumed
                state = built.get(bar.symbol)
                if state is None:
                    state = built[bar.symbol] = SymbolState(bar.symbol, cap)
                if state.last_ts is None or bar.ts_ns > state.last_ts:
                    state.append(bar, None, "", m.source)

        async def read() -> int:
            built.clear()
            return await self._in.read_history(partition, end_offset, since_ms, sink)

        lookback = self._lookback_s
        since_ms = None if lookback is None else int((now - lookback) * 1e3)
        io = self._calls.io
        start = await io("kafka", "reading retained bars", read)
        for symbol, state in held.items():  # what this daemon holds is complete
            if owner.get(symbol) == partition:
                built[symbol] = state
        if start > 0:
            self._cache.partial.add(partition)
        for symbol, state in built.items():
            if symbol not in held:
                state.complete = start == 0 or len(state) >= cap
        symbols = sorted(built)
        stored = await io("redis", "loading state", lambda: self._store.load(symbols))
        writes = []
        for symbol in symbols:
            merged = merge_restored(built[symbol], stored[symbol])
            if merged is not None:
                writes.append((merged, stored[symbol].last_ts))
        written = await io("redis", "restoring state", lambda: self._store.restore(writes))
        for symbol in written:
            if symbol not in held or owner.get(symbol) != partition:
                held.pop(symbol, None)  # loaded again from the store when it comes up
        self._metrics.state_restored.inc(len(written))
        log.info(
            "state restored from the input topic",
            partition=f"{partition.topic}/{partition.partition}", from_offset=start, to_offset=end_offset,
            symbols=len(written), incomplete=sum(not st.complete for st, _ in writes),
        )  # fmt: skip
