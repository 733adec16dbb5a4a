"""The challengers' backlog (daemon/model/shadow_work.py), pure logic: bounded with the oldest skipped,
chunks of each symbol's oldest bar in arrival order, no chunk while a round of the stream is under way, and,
once the stream's bursts come regularly, none when the next burst is due, each sized to end before it."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from daemon.model.challenger_settings import ChallengerSettings
from daemon.model.shadow_work import GAP_FILL, Entry, ShadowBacklog
from kronos_core.stream_types import SeriesWindow


def _entry(symbol: str, i: int) -> Entry:
    ts = np.array([np.datetime64(1_700_000_000 + i * 60, "s")], dtype="datetime64[ns]")
    window = SeriesWindow(symbol, np.ones((1, 6)), ts, ts + np.timedelta64(60, "s"), i, None)
    return Entry(window, state=None, ctx=i, added=time.monotonic())


def test_beyond_the_bound_the_oldest_are_skipped() -> None:
    backlog = ShadowBacklog(ChallengerSettings(max_backlog=3))
    assert backlog.add([_entry("A", 0), _entry("B", 0)]) == []
    skipped = backlog.add([_entry("A", 1), _entry("B", 1)])
    assert [(e.window.series_id, e.ctx) for e in skipped] == [("A", 0)]
    assert len(backlog) == 3


async def test_chunks_hold_one_bar_per_symbol_oldest_first() -> None:
    backlog = ShadowBacklog(ChallengerSettings(chunk_max=2, quiet_s=0.001, chunk_budget_s=1.0))
    backlog.cost.observe(2, 0.01)  # a call is cheap: the budget allows chunk_max windows
    backlog.add([_entry("A", 0), _entry("A", 1), _entry("B", 0), _entry("C", 0)])
    got = []
    while len(backlog):
        got.append([(e.window.series_id, e.ctx) for e in await backlog.next_chunk()])
    assert got == [[("A", 0), ("B", 0)], [("A", 1), ("C", 0)]]  # a symbol's next bar: in a later chunk


async def test_no_chunk_while_a_round_runs_nor_before_the_stream_is_quiet() -> None:
    backlog = ShadowBacklog(ChallengerSettings(quiet_s=0.2, max_defer_s=10.0))
    backlog.round_begins()
    backlog.add([_entry("A", 0)])
    waiting = asyncio.create_task(backlog.next_chunk(poll_s=0.005))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # the round is still under way
    backlog.round_ends()
    ended = time.monotonic()
    chunk = await asyncio.wait_for(waiting, 2.0)
    assert time.monotonic() - ended >= 0.2  # the stream stayed quiet that long first
    assert [e.ctx for e in chunk] == [0]


async def test_a_stream_never_quiet_still_lets_old_bars_run_between_rounds() -> None:
    backlog = ShadowBacklog(ChallengerSettings(quiet_s=10.0, max_defer_s=0.1))
    backlog.round_begins()
    backlog.round_ends()
    backlog.add([_entry("A", 0)])
    chunk = await asyncio.wait_for(backlog.next_chunk(poll_s=0.005), 2.0)
    assert [e.ctx for e in chunk] == [0]


def test_revoked_symbols_leave_the_backlog() -> None:
    backlog = ShadowBacklog()
    backlog.add([_entry("A", 0), _entry("B", 0), _entry("A", 1)])
    assert [(e.window.series_id, e.ctx) for e in backlog.drop(["A"])] == [("A", 0), ("A", 1)]
    assert len(backlog) == 1


def _bursts(backlog: ShadowBacklog, starts: list[float], length: float = 1.0, rounds: int = 5) -> None:
    """The stream's rounds: at each start, a burst of ``rounds`` rounds over ``length`` seconds."""
    for start in starts:
        for i in range(rounds):
            t = start + i * length / rounds
            backlog.round_begins(now=t)
            backlog.round_ends(now=t + 0.05)


def test_without_a_schedule_a_chunk_takes_about_the_budget() -> None:
    backlog = ShadowBacklog(ChallengerSettings(chunk_max=32, chunk_budget_s=0.05, quiet_s=0.25))
    backlog.add([_entry(f"S{i}", 0) for i in range(40)])
    now = time.monotonic() + 100  # quiet: no round ever
    assert backlog.chunk_size(now) == 1  # no call measured yet: one window
    for n, t in [(1, 0.023), (2, 0.026), (8, 0.039), (32, 0.118)]:  # fixed ~20 ms + ~3 ms per window
        backlog.cost.observe(n, t)
    size = backlog.chunk_size(now)
    assert 6 <= size <= 12
    assert backlog.cost.seconds(size) <= 0.05 < backlog.cost.seconds(size + 2)  # type: ignore[operator]
    assert backlog.chunk_size(now, calls=2) < size  # two challengers: each call gets half the budget


def test_with_a_regular_schedule_no_chunk_when_the_next_burst_is_due() -> None:
    config = ChallengerSettings(chunk_max=32, chunk_budget_s=0.05, quiet_s=0.25, max_defer_s=1.0)
    backlog = ShadowBacklog(config)
    for n, t in [(1, 0.023), (8, 0.039), (32, 0.118)]:
        backlog.cost.observe(n, t)
    _bursts(backlog, [1000.0, 1005.0, 1010.02, 1014.99, 1020.0])  # a bar interval of 5 s, bursts of 1 s
    backlog.add([_entry(f"S{i}", 0) for i in range(100)])
    last_end = 1020.0 + 0.8 + 0.05
    # mid-burst (between two rounds of it, even with old bars waiting): not now
    assert backlog.chunk_size(1020.5) == 0
    # the burst is over: full chunks in the gap before the next burst (due at 1025)
    assert backlog.chunk_size(last_end + 0.3) == 32
    # close to it: only what ends well before 0.05 s before it (GAP_FILL of the time left); then nothing
    near = 1025.0 - 0.05 - 0.06
    assert 0 < backlog.chunk_size(near) < 32
    assert backlog.cost.seconds(backlog.chunk_size(near)) <= 0.06 * GAP_FILL  # type: ignore[operator]
    assert backlog.chunk_size(1025.0 - 0.06) == 0
    assert backlog.chunk_size(1025.2) == 0  # due, not come yet: still expected
    # a burst that never comes: past its lateness, chunks sized by the budget again
    late = 1025.0 + 0.6
    assert 0 < backlog.chunk_size(late) <= backlog.cost.windows_within(0.05, 32)


def test_in_a_long_gap_one_large_call_fills_most_of_it() -> None:
    backlog = ShadowBacklog(ChallengerSettings())  # chunk_max 256: large calls cost less per window
    for n, t in [(8, 0.17), (32, 0.65)]:  # 20 ms a window, 10 ms fixed
        backlog.cost.observe(n, t)
    _bursts(backlog, [1000.0, 1005.0, 1010.0, 1015.0, 1020.0])
    backlog.add([_entry(f"S{i}", 0) for i in range(400)])
    start = 1021.2  # the burst ended at 1020.85 (quiet since 0.35 s); the next is due at 1025
    size = backlog.chunk_size(start)
    left = 1025.0 - backlog.config.chunk_budget_s - start
    assert size == int((left * GAP_FILL - 0.01) / 0.02)  # 149 windows: one call of 2.99 s in 3.75 s
    assert start + backlog.cost.seconds(size) < 1025.0 - backlog.config.chunk_budget_s  # type: ignore[operator]


def test_an_irregular_stream_learns_no_schedule() -> None:
    backlog = ShadowBacklog(ChallengerSettings(quiet_s=0.25))
    _bursts(backlog, [1000.0, 1003.0, 1009.0, 1010.5, 1016.0], length=0.2, rounds=2)
    assert backlog.clock.next_due(1017.0) is None


async def test_scoring_waits_for_the_gap_between_bursts() -> None:
    backlog = ShadowBacklog(ChallengerSettings(quiet_s=0.05, chunk_budget_s=0.02, max_defer_s=30.0))
    t0 = time.monotonic()
    period = 0.4
    _bursts(backlog, [t0 - 4 * period + i * period for i in range(4)], length=0.05, rounds=2)
    # the next burst is due at t0; the one after at t0 + period: a scoring of 0.2 s fits only after the
    # burst at t0 (which we play now) is over
    backlog.round_begins()
    waiting = asyncio.create_task(backlog.until_free(0.2, poll_s=0.005))
    await asyncio.sleep(0.1)
    assert not waiting.done()  # a round is under way
    backlog.round_ends()
    ended = time.monotonic()
    await asyncio.wait_for(waiting, 2.0)
    assert time.monotonic() - ended >= 0.05  # the burst was over first
