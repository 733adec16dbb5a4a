"""The challengers' backlog: shadow forecasts made on the model thread while the stream is idle.

A round's champion forecasts are published, stored and scored by the loop as without challengers;
the windows the challengers forecast (the same bars) join this backlog (:meth:`ShadowBacklog.add`).
:meth:`ShadowBacklog.next_chunk` hands them to the model thread in chunks, only between rounds, and
sized so that a round does not wait behind them (settings ``KRONOS_CHALLENGERS__*``):

- when the stream's rounds come in regular bursts (one per bar interval: learned from the rounds,
  :class:`daemon.model.shadow_schedule.BurstClock`), only in the gap after a burst (no round for
  ``quiet_s``) and before the next is due, less ``chunk_budget_s``; each chunk sized by the measured
  cost of a call (:class:`~daemon.model.shadow_schedule.CallCost`) to take at most ``GAP_FILL`` of that
  time, and at most ``chunk_max`` windows (large calls cost less per window than a round's);
- without such a schedule (or when a burst is overdue), once the stream has been quiet for
  ``quiet_s``, or, when it never is, once the oldest waiting window is ``max_defer_s`` old; each
  chunk sized to take about ``chunk_budget_s``, the longest a round that arrives meanwhile waits.

Running a challenger call while the loop encodes, publishes and stores a round would also slow it
down: the model's many short operations each take the interpreter lock back from the busy event loop.

The backlog is bounded: beyond ``max_backlog`` windows the oldest are skipped (the challenger fell
behind the stream) and counted, per version, in ``kronos_challenger_skipped_forecasts_total``; so are
those of symbols this replica no longer owns. Skipped bars have no shadow forecast, so the paired
scores cover exactly the bars both versions forecast.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from daemon.model.challenger_settings import ChallengerSettings
from daemon.model.shadow_schedule import BurstClock, CallCost
from kronos_core.stream_types import SeriesWindow

log = structlog.get_logger("kronos.challengers")

SEPARATOR = "~"  # a challenger's pending forecasts of a symbol: {symbol}~{version}
STALE_ROUND_S = 30.0  # a round begun this long ago and never ended (it failed): no longer in progress
GAP_FILL = 0.8  # a chunk in a gap is sized to take this share of the time left: its cost is a fit, and a
# call of a second that overran by a fifth would hold up the next burst's first round


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
    """Windows waiting for the challengers, oldest first, and when the stream lets them run."""

    def __init__(self, config: ChallengerSettings | None = None) -> None:
        self.config = config or ChallengerSettings()
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._seq = 0
        self._rounds_open = 0  # 1 from a round's beginning to its end (one that fails: until the next's)
        self._round_started = 0.0
        self._last_round_end: float | None = None
        self._wake = asyncio.Event()
        self.clock = BurstClock(self.config.quiet_s)
        self.cost = CallCost()  # one challenger call's time, by windows (ChallengerSet.observe)
        self._learned: tuple[float, float] | None = None  # the bursts' (period, jitter), as last logged

    def __len__(self) -> int:
        return len(self._entries)

    # -- the loop's rounds --------------------------------------------------------------------------

    def round_begins(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.clock.round_begins(now, now if self._rounds_open else self._last_round_end)
        learned = self.clock.period()
        if (learned is None) != (self._learned is None):
            if learned is None:
                log.info("the stream's bursts of rounds are irregular: challengers run within chunk_budget_s")
            else:
                log.info("the stream's bursts of rounds learned: challengers run between them",
                         period_s=round(learned[0], 3), jitter_s=round(learned[1], 3))  # fmt: skip
        self._learned = learned
        self._rounds_open = 1
        self._round_started = now

    def round_ends(self, now: float | None = None) -> None:
        self._rounds_open = 0
        self._last_round_end = time.monotonic() if now is None else now
        self._wake.set()

    @property
    def in_round(self) -> bool:
        if self._rounds_open and time.monotonic() - self._round_started >= STALE_ROUND_S:
            self._rounds_open = 0  # rounds that failed before they ended
        return self._rounds_open > 0

    def _quiet(self, now: float) -> bool:
        return self._last_round_end is None or now - self._last_round_end >= self.config.quiet_s

    def available_s(self, now: float) -> float:
        """How long shadow work started now may take: 0, not now (a round runs, or the stream's bursts
        come regularly and one is under way, due or overdue); inf, no learned schedule says."""
        if self.in_round:
            return 0.0
        due = self.clock.next_due(now)
        if due is not None:
            when, late = due
            if now < when + late:  # the schedule holds: work in the gap before the next burst only
                return max(0.0, when - self.config.chunk_budget_s - now) if self._quiet(now) else 0.0
        return math.inf

    def chunk_size(self, now: float, calls: int = 1) -> int:
        """How many windows a chunk started now may hold, ``calls`` calls on it (one per challenger);
        0: not now."""
        if not self._entries:
            return 0
        c = self.config
        available = self.available_s(now)
        if available == 0:
            return 0
        if math.isinf(available):  # a bar may come any time: once quiet (or old bars), within the budget
            oldest = next(iter(self._entries.values())).added
            if not (self._quiet(now) or now - oldest >= c.max_defer_s):
                return 0
            return self.cost.windows_within(c.chunk_budget_s / calls, c.chunk_max)
        one = self.cost.seconds(1)
        if one is not None and one * calls > available:
            return 0  # not even one window before the next burst
        return self.cost.windows_within(available * GAP_FILL / calls, c.chunk_max)

    async def until_free(self, seconds: float, poll_s: float = 0.01) -> None:
        """Until work of about ``seconds`` may run (the challengers' scoring): no round under way and,
        with a burst schedule, it ends before the next burst is due. After ``max_defer_s`` of waiting,
        in any gap between bursts; after four times that, once no round runs."""
        waited = time.monotonic()
        while True:
            now = time.monotonic()
            available, late = self.available_s(now), now - waited
            if available >= seconds or (late >= self.config.max_defer_s and available > 0):
                return
            if late >= 4 * self.config.max_defer_s and not self.in_round:
                return
            await asyncio.sleep(poll_s)

    # -- entries ------------------------------------------------------------------------------------

    def add(self, entries: Iterable[Entry]) -> list[Entry]:
        """Queue a round's entries; returns those skipped to keep within ``max_backlog`` (oldest first)."""
        for entry in entries:
            self._seq += 1
            self._entries[self._seq] = entry
        skipped = []
        while len(self._entries) > self.config.max_backlog:
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

    async def next_chunk(self, calls: int = 1, poll_s: float = 0.02) -> list[Entry]:
        """The oldest entries (as many as :meth:`chunk_size` allows), once the stream lets them run:
        each symbol's oldest waiting bar, so that its bars are forecast (and scored) in order."""
        while True:
            if not self._entries:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            size = self.chunk_size(now, calls)
            if size:
                break
            await asyncio.sleep(poll_s)
        chunk: list[Entry] = []
        symbols: set[str] = set()
        for key, entry in list(self._entries.items()):
            if len(chunk) == size:
                break
            if entry.window.series_id in symbols:
                continue  # the same symbol's next bar: in a later call, after this one's
            symbols.add(entry.window.series_id)
            chunk.append(self._entries.pop(key))
        due = self.clock.next_due(now)
        log.debug("challenger chunk", windows=len(chunk), waiting=len(self._entries),
                  next_burst_in_s=None if due is None else round(due[0] - now, 3))  # fmt: skip
        return chunk
