"""When the challengers' shadow work may run: the stream's learned burst schedule and the measured
cost of a challenger call (pure logic, used by :mod:`daemon.model.shadow_work`).

A bar stream closes its bars on a clock: each bar interval, every symbol's bar arrives within a short
spread, so the daemon's rounds come in a *burst*, then nothing until the next one.
:class:`BurstClock` learns that clock from the rounds themselves. A *burst start* is a round that begins
after the stream was quiet for ``quiet_s``; once the recent burst starts are regular (the spread of
their intervals small against their median), the next burst is due one period after each. A
challenger call that would still run when it is due is not started.

:class:`CallCost` fits a challenger call's time as ``fixed + per_window * n`` on the calls measured,
so a call can be sized to the time it may take.
"""

from __future__ import annotations

import statistics
from collections import deque

STARTS_KEPT = 9  # burst starts remembered (8 intervals)
MIN_INTERVALS = 3  # intervals before the schedule is trusted
MAX_SPREAD = 0.1  # the intervals' median absolute deviation, as a share of their median, to trust them
COSTS_KEPT = 32  # challenger calls remembered for the cost fit
SURPRISES_KEPT = 3  # the latest calls whose time against the fit's scales the estimate


class BurstClock:
    """The stream's bursts of rounds: when the next one is due, once they come regularly."""

    def __init__(self, quiet_s: float) -> None:
        self.quiet_s = quiet_s
        self._starts: deque[float] = deque(maxlen=STARTS_KEPT)
        self._last_end: float | None = None

    def round_begins(self, now: float, last_round_end: float | None) -> None:
        if last_round_end is None or now - last_round_end >= self.quiet_s:
            self._starts.append(now)

    def period(self) -> tuple[float, float] | None:
        """(period, jitter) of the recent bursts, or None while they are too few or irregular."""
        starts = list(self._starts)
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        if len(gaps) < MIN_INTERVALS:
            return None
        median = statistics.median(gaps)
        jitter = statistics.median(abs(g - median) for g in gaps)
        if median <= 0 or jitter > MAX_SPREAD * median:
            return None
        return median, jitter

    def next_due(self, now: float) -> tuple[float, float] | None:
        """(when the next burst is due, how late it may come), or None without a regular schedule (or
        when the burst due last did not come).

        Projected from each of the last few burst starts and the earliest taken, so one spurious start
        (a gap inside a burst) cannot push the next burst later than it is."""
        learned = self.period()
        if learned is None:
            return None
        period, jitter = learned
        late = max(self.quiet_s, 3 * jitter, 0.1 * period)  # a burst not begun by then: not coming
        starts = list(self._starts)
        after = starts[-1] + self.quiet_s  # the next burst: after the one begun last
        due = min(s + (int((after - s) // period) + 1) * period for s in starts[-3:])
        if now > due + late:
            return None  # it did not come: no schedule until the bursts come regularly again
        return due, late


class CallCost:
    """A challenger call's time as ``fixed + per_window * windows``, fitted on recent calls, and scaled
    up while the latest calls took longer than the fit said (the machine slowed down: a fit over the
    last ``COSTS_KEPT`` calls lags, and a call sized by it would run into the next burst)."""

    def __init__(self) -> None:
        self._calls: deque[tuple[int, float]] = deque(maxlen=COSTS_KEPT)
        self._surprises: deque[float] = deque(maxlen=SURPRISES_KEPT)  # observed / predicted, latest calls

    def observe(self, windows: int, seconds: float) -> None:
        if windows > 0 and seconds >= 0:
            predicted = self._fitted_seconds(windows)
            if predicted:
                self._surprises.append(seconds / predicted)
            self._calls.append((windows, seconds))

    def slowdown(self) -> float:
        """How much longer than the fit the latest calls took (at least 1)."""
        return max([1.0, *self._surprises])

    def fit(self) -> tuple[float, float] | None:
        """(fixed, per_window) seconds, or None before any call."""
        if not self._calls:
            return None
        ns = [n for n, _ in self._calls]
        ts = [t for _, t in self._calls]
        if len(set(ns)) > 1:
            n_mean, t_mean = statistics.fmean(ns), statistics.fmean(ts)
            var = sum((n - n_mean) ** 2 for n in ns)
            slope = sum((n - n_mean) * (t - t_mean) for n, t in zip(ns, ts, strict=True)) / var
            fixed = t_mean - slope * n_mean
            if slope > 0 and fixed >= 0:
                return fixed, slope
        # one size only (or a noisy fit): no fixed part, an upper bound beyond the sizes seen
        return 0.0, sum(ts) / sum(ns)

    def _fitted_seconds(self, windows: int) -> float | None:
        fitted = self.fit()
        return None if fitted is None else fitted[0] + fitted[1] * windows

    def seconds(self, windows: int) -> float | None:
        """The time a call of ``windows`` is expected to take (the fit, times :meth:`slowdown`)."""
        fitted = self._fitted_seconds(windows)
        return None if fitted is None else fitted * self.slowdown()

    def windows_within(self, seconds: float, most: int) -> int:
        """The most windows (1 to ``most``) one call takes at most ``seconds`` for; 1 before any call,
        and one more than the only size measured while that one took less."""
        fitted = self.fit()
        if fitted is None:
            return 1
        sizes, slow = {n for n, _ in self._calls}, self.slowdown()
        if len(sizes) == 1 and fitted[1] * min(sizes) * slow <= seconds:  # one size seen, within the time:
            return min(most, min(sizes) + 1)  # one more window, to learn the fixed part from the two
        fixed, per_window = fitted
        return max(1, min(most, int((seconds / slow - fixed) / per_window + 1e-9)))
