"""The challengers' backlog: shadow forecasts made on the model thread while the stream is idle.

A round's champion forecasts are published, stored and scored by the loop as without challengers;
the windows the challengers forecast (the same bars) join this backlog (:meth:`ShadowBacklog.add`).
:meth:`ShadowBacklog.next_chunk` hands them to the model thread in chunks of at most ``CHUNK`` windows,
and only between rounds: once the stream has been quiet for ``QUIET_S`` (a bar interval's rounds
come in a burst), or, when it never is, once the oldest waiting window is ``MAX_DEFER_S`` old. A
round that arrives meanwhile waits for one chunk at most. Running a challenger call while the loop
encodes, publishes and stores a round would also slow it down: the model's many short operations
each take the interpreter lock back from the busy event loop.

The backlog is bounded: beyond ``MAX_BACKLOG`` windows the oldest are skipped (the challenger fell
behind the stream) and counted, per version, in ``kronos_challenger_skipped_forecasts_total``; so are
those of symbols this replica no longer owns. Skipped bars have no shadow forecast, so the paired
scores cover exactly the bars both versions forecast.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kronos_core.stream_types import SeriesWindow

CHUNK = 32  # windows per challenger call: a round that arrives waits for one such call at most
QUIET_S = 0.25  # the stream made no round for this long: its burst is over
MAX_DEFER_S = 1.0  # ... or the oldest waiting window is this old: run between rounds anyway
SEPARATOR = "~"  # a challenger's pending forecasts of a symbol: {symbol}~{version}
MAX_BACKLOG = 4096  # windows waiting at most (beyond, the oldest are skipped and counted)
STALE_ROUND_S = 30.0  # a round begun this long ago and never ended (it failed): no longer in progress


def selected(symbol: str, fraction: float) -> bool:
    """Whether challengers forecast ``symbol``: a stable hash, the same on every replica and restart."""
    return fraction >= 1.0 or zlib.crc32(symbol.encode()) / 2**32 < fraction


class ShadowState:
    """A symbol's state as the scorer sees it for one challenger: its own pending list and calibration
    (``symbol``), the real symbol for pairing losses (``pair_symbol``), the same bars."""

    __slots__ = ("symbol", "pair_symbol", "timestamps", "rows")

    def __init__(self, state: Any, version: str) -> None:
        self.pair_symbol = state.symbol
        self.symbol = f"{state.symbol}{SEPARATOR}{version}"
        self.timestamps = state.timestamps
        self.rows = state.rows


@dataclass
class Entry:
    """One bar a challenger forecasts: the champion's window of it (its seed replaced per version),
    the symbol's state (scored against the bars it holds then) and the champion's context."""

    window: SeriesWindow
    state: Any
    ctx: Any
    added: float


class ShadowBacklog:
    """Windows waiting for the challengers, oldest first, and when the stream is busy."""

    def __init__(self) -> None:
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._seq = 0
        self._rounds_open = 0  # 1 from a round's beginning to its end (one that fails: until the next's)
        self._round_started = 0.0
        self._last_round_end = 0.0
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._entries)

    # -- the loop's rounds --------------------------------------------------------------------------

    def round_begins(self) -> None:
        self._rounds_open = 1
        self._round_started = time.monotonic()

    def round_ends(self) -> None:
        self._rounds_open = 0
        self._last_round_end = time.monotonic()
        self._wake.set()

    @property
    def in_round(self) -> bool:
        if self._rounds_open and time.monotonic() - self._round_started >= STALE_ROUND_S:
            self._rounds_open = 0  # rounds that failed before they ended
        return self._rounds_open > 0

    async def until_no_round(self, poll_s: float = 0.01) -> None:
        while self.in_round:
            await asyncio.sleep(poll_s)

    # -- entries ------------------------------------------------------------------------------------

    def add(self, entries: Iterable[Entry]) -> list[Entry]:
        """Queue a round's entries; returns those skipped to keep within ``MAX_BACKLOG`` (oldest first)."""
        for entry in entries:
            self._seq += 1
            self._entries[self._seq] = entry
        skipped = []
        while len(self._entries) > MAX_BACKLOG:
            skipped.append(self._entries.popitem(last=False)[1])
        self._wake.set()
        return skipped

    def drop(self, symbols: Iterable[str]) -> list[Entry]:
        """Forget the entries of ``symbols`` (revoked); returns them."""
        gone = set(symbols)
        keys = [k for k, e in self._entries.items() if e.window.series_id in gone]
        return [self._entries.pop(k) for k in keys]

    def clear(self) -> list[Entry]:
        entries = list(self._entries.values())
        self._entries.clear()
        return entries

    async def next_chunk(self, poll_s: float = 0.02) -> list[Entry]:
        """The oldest entries (at most ``CHUNK``, one bar per symbol), once the stream lets them run."""
        while True:
            if not self._entries:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            oldest = next(iter(self._entries.values())).added
            if not self.in_round and (now - self._last_round_end >= QUIET_S or now - oldest >= MAX_DEFER_S):
                break
            await asyncio.sleep(poll_s)
        chunk: list[Entry] = []
        symbols: set[str] = set()
        for key, entry in list(self._entries.items()):
            if len(chunk) == CHUNK:
                break
            if entry.window.series_id in symbols:
                break  # the same symbol's next bar: in the next call, after this one's
            symbols.add(entry.window.series_id)
            chunk.append(self._entries.pop(key))
        return chunk
