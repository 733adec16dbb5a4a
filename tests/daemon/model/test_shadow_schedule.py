"""The challengers' schedule (daemon/model/shadow_schedule.py), pure logic: a call's cost fitted as fixed
plus per window, and the stream's bursts learned from its rounds."""

from __future__ import annotations

import pytest

from daemon.model.shadow_schedule import BurstClock, CallCost


def test_call_cost_fits_a_fixed_part_and_a_part_per_window() -> None:
    cost = CallCost()
    assert cost.fit() is None and cost.windows_within(1.0, 32) == 1
    for n in (1, 4, 8, 16, 32):
        cost.observe(n, 0.020 + 0.003 * n)
    fixed, per_window = cost.fit()  # type: ignore[misc]
    assert fixed == pytest.approx(0.020) and per_window == pytest.approx(0.003)
    assert cost.windows_within(0.050, 32) == 10
    assert cost.windows_within(10.0, 32) == 32
    assert cost.windows_within(0.001, 32) == 1  # never fewer than one window


def test_call_cost_of_one_size_only_is_an_upper_bound_beyond_it_and_grows_by_one() -> None:
    cost = CallCost()
    cost.observe(2, 0.026)
    assert cost.seconds(2) == pytest.approx(0.026)
    assert cost.seconds(8) == pytest.approx(0.104)  # no fixed part known: 13 ms per window
    assert cost.windows_within(0.05, 32) == 3  # within the time: one more window, to learn the fixed part
    assert cost.windows_within(0.02, 32) == 1  # over it: the windows 13 ms each fit in
    cost.observe(3, 0.029)
    assert cost.windows_within(0.05, 32) == 10  # 20 ms + 3 ms per window


def test_chunks_grow_from_one_window_to_the_budget() -> None:
    cost, size = CallCost(), 1
    for _ in range(10):
        cost.observe(size, 0.020 + 0.003 * size)
        size = cost.windows_within(0.05, 32)
    assert size == 10


def test_bursts_are_learned_and_one_spurious_start_does_not_delay_the_next() -> None:
    clock = BurstClock(quiet_s=0.25)
    last_end = None
    for start in (0.0, 5.0, 10.0):
        clock.round_begins(start, last_end)
        last_end = start + 1.0
    assert clock.next_due(11.5) is None  # two intervals: not trusted yet
    clock.round_begins(15.0, last_end)
    assert clock.next_due(16.5) == pytest.approx((20.0, 0.5))
    clock.round_begins(15.6, 15.3)  # a gap inside the burst looked like a new one
    due, _ = clock.next_due(16.5)  # type: ignore[misc]
    assert due == pytest.approx(20.0)
    assert clock.next_due(21.0) is None  # the burst due at 20 did not come


def test_rounds_within_a_burst_are_not_burst_starts() -> None:
    clock = BurstClock(quiet_s=0.25)
    for start in (0.0, 5.0, 10.0, 15.0):
        clock.round_begins(start, start - 2.0)
        clock.round_begins(start + 0.1, start + 0.05)  # 0.05 s after the previous round ended
    assert clock.period() == pytest.approx((5.0, 0.0))


def test_calls_slower_than_the_fit_shrink_the_next_until_the_machine_is_fast_again() -> None:
    cost = CallCost()
    for n in (10, 50, 100, 200, 10, 50, 100, 200):
        cost.observe(n, 0.010 + 0.004 * n)  # 4 ms a window on a quiet machine
    assert cost.slowdown() == pytest.approx(1.0)
    quiet = cost.windows_within(0.8, 256)
    assert quiet == 197  # (0.8 - 0.010) / 0.004
    cost.observe(200, 2 * (0.010 + 0.004 * 200))  # the machine slowed down: twice the time
    assert cost.slowdown() == pytest.approx(2.0, rel=0.02)
    slow = cost.windows_within(0.8, 256)
    assert slow < 0.55 * quiet  # the next call planned for the slower machine (and the fit moved too)
    assert cost.seconds(slow) <= 0.8  # type: ignore[operator]
    for _ in range(3):
        cost.observe(100, 0.010 + 0.004 * 100)  # fast again: three calls on time forget the slow one
    assert cost.slowdown() < 1.1
