"""The challengers' backlog (daemon/model/shadow_work.py), pure logic: bounded with the oldest skipped,
chunks of one bar per symbol in arrival order, and no chunk while a round of the stream is under way."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from daemon.model import shadow_work
from daemon.model.shadow_work import Entry, ShadowBacklog
from kronos_core.stream_types import SeriesWindow


def _entry(symbol: str, i: int) -> Entry:
    ts = np.array([np.datetime64(1_700_000_000 + i * 60, "s")], dtype="datetime64[ns]")
    window = SeriesWindow(symbol, np.ones((1, 6)), ts, ts + np.timedelta64(60, "s"), i, None)
    return Entry(window, state=None, ctx=i, added=time.monotonic())


def test_beyond_the_bound_the_oldest_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shadow_work, "MAX_BACKLOG", 3)
    backlog = ShadowBacklog()
    assert backlog.add([_entry("A", 0), _entry("B", 0)]) == []
    skipped = backlog.add([_entry("A", 1), _entry("B", 1)])
    assert [(e.window.series_id, e.ctx) for e in skipped] == [("A", 0)]
    assert len(backlog) == 3


async def test_chunks_hold_one_bar_per_symbol_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shadow_work, "CHUNK", 2)
    monkeypatch.setattr(shadow_work, "QUIET_S", 0.0)
    backlog = ShadowBacklog()
    backlog.add([_entry("A", 0), _entry("A", 1), _entry("B", 0), _entry("C", 0)])
    got = []
    while len(backlog):
        got.append([(e.window.series_id, e.ctx) for e in await backlog.next_chunk()])
    assert got == [[("A", 0)], [("A", 1), ("B", 0)], [("C", 0)]]


async def test_no_chunk_while_a_round_runs_nor_before_the_stream_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shadow_work, "QUIET_S", 0.2)
    monkeypatch.setattr(shadow_work, "MAX_DEFER_S", 10.0)
    backlog = ShadowBacklog()
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


async def test_a_stream_never_quiet_still_lets_old_bars_run_between_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shadow_work, "QUIET_S", 10.0)
    monkeypatch.setattr(shadow_work, "MAX_DEFER_S", 0.1)
    backlog = ShadowBacklog()
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
