"""Horizon timestamps on a trading calendar: the bars a forecast's steps stand for.

By default (``KRONOS_MODEL__EXCHANGE_CALENDAR`` unset or ``24/7``) the horizon continues the bar grid
without gaps: ``last + k * interval``. With an exchange code from ``exchange_calendars`` (``XSHG``,
``XNYS``, ``XLON``, ...) the horizon steps are the next bars of that exchange's trading sessions, so
nights, weekends, holidays and lunch breaks (XSHG 11:30-13:00) are skipped. The timestamps go into the
forecast message and into kronos_core as the future time features of the generated steps; kronos_core
itself never sees a calendar.

Bars are labelled by their end by default (``KRONOS_MODEL__CALENDAR_BAR_LABEL=end``: a 5-minute XSHG
day runs 09:35 ... 11:30, 13:05 ... 15:00 local time, the usual vendor convention and the bundled
bars'), or by their start (``start``: 09:30 ... 11:25, 13:00 ... 14:55). A session whose length is not
a multiple of the interval ends with a short bar at the close (end labels).

Daily bars (an interval of 20 to 36 h) step through sessions: the next sessions' dates at the last
bar's time of day. Longer bars (weekly, monthly) continue their grid without a calendar. The grids are computed once per interval for a span of sessions and cached
(``exchange_calendars`` takes ~0.2 s per call), so the hot path is one binary search.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
import pandas as pd
import structlog

from daemon.errors import ConfigError
from daemon.io.messages import horizon_ns

log = structlog.get_logger("kronos.calendars")

CONTINUOUS = "24/7"
BarLabel = Literal["end", "start"]

_DAILY_MIN_NS = 20 * 3600 * 10**9  # an inferred interval this long is a daily bar
_DAILY_MAX_NS = 36 * 3600 * 10**9  # longer (weekly, monthly bars): the gap-free grid
_SPAN_SESSIONS = 40  # sessions covered by one cached grid (beyond what the horizon needs)


class OutOfCalendar(ValueError):
    """The bars lie where the exchange calendar has no data (e.g. holidays not yet published)."""


class HorizonCalendar(Protocol):
    """What the loop needs: the timestamps of the ``horizon`` bars after ``last_ns``."""

    name: str

    def future(self, last_ns: int, interval_ns: int, horizon: int) -> list[int]: ...


class ContinuousCalendar:
    """No gaps: ``last + k * interval`` (the default, markets that never close)."""

    name = CONTINUOUS

    def future(self, last_ns: int, interval_ns: int, horizon: int) -> list[int]:
        return horizon_ns(last_ns, interval_ns, horizon)


class ExchangeCalendar:
    """Horizon bars on the sessions of an ``exchange_calendars`` calendar (e.g. ``XSHG``, ``XNYS``)."""

    def __init__(self, name: str, label: BarLabel = "end") -> None:
        import exchange_calendars as xc

        try:
            self._cal = xc.get_calendar(name)
        except Exception as exc:  # InvalidCalendarName and friends
            raise ConfigError(
                f"unknown exchange calendar {name!r} (KRONOS_MODEL__EXCHANGE_CALENDAR); use an "
                f"exchange_calendars code such as XSHG, XNYS, XLON, or 24/7: {exc}"
            ) from exc
        self.name = name
        self.label = label
        self.tz = str(self._cal.tz)
        self._grids: dict[int, np.ndarray] = {}  # interval -> sorted bar timestamps (epoch ns)
        self._warned = False

    # -- public ---------------------------------------------------------------------------------

    def future(self, last_ns: int, interval_ns: int, horizon: int) -> list[int]:
        if interval_ns <= 0:
            raise ValueError(f"bar interval must be positive, got {interval_ns} ns")
        if interval_ns > _DAILY_MAX_NS:
            return ContinuousCalendar().future(last_ns, interval_ns, horizon)
        grid = self._grids.get(interval_ns)
        if grid is None or not self._covers(grid, last_ns, horizon):
            try:
                grid = self._build(interval_ns, last_ns, horizon)
            except OutOfCalendar as exc:
                if not self._warned:
                    log.warning(
                        "bars lie outside the exchange calendar's range; horizon timestamps continue "
                        "the bar grid without gaps there (upgrade exchange_calendars)",
                        calendar=self.name,
                        error=str(exc),
                    )
                    self._warned = True
                return ContinuousCalendar().future(last_ns, interval_ns, horizon)
            self._grids[interval_ns] = grid
        i = int(np.searchsorted(grid, last_ns, side="right"))
        return [int(t) for t in grid[i : i + horizon]]

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _covers(grid: np.ndarray, last_ns: int, horizon: int) -> bool:
        if len(grid) == 0 or last_ns < grid[0]:
            return False
        i = int(np.searchsorted(grid, last_ns, side="right"))
        return i + horizon <= len(grid)

    def _build(self, interval_ns: int, last_ns: int, horizon: int) -> np.ndarray:
        last = pd.Timestamp(last_ns, tz="UTC")
        span = _SPAN_SESSIONS
        while True:
            if interval_ns >= _DAILY_MIN_NS:
                grid = self._daily_grid(last, span)
            else:
                grid = self._intraday_grid(last, interval_ns, span)
            if self._covers(grid, last_ns, horizon):
                return grid
            span *= 2  # long horizons of short bars need more sessions
            if span > 100_000:
                raise OutOfCalendar(f"calendar {self.name} has no {horizon} bars after {last}")

    def _bounds(self, last: pd.Timestamp, days_ahead: int) -> tuple[pd.Timestamp, pd.Timestamp]:
        """A window of calendar days around ``last``, the calendar widened when it stops short."""
        start = (last - pd.Timedelta(days=3)).floor("D")
        end = (last + pd.Timedelta(days=days_ahead)).ceil("D")
        first, final = self._cal.first_minute, self._cal.last_minute
        if start < first or end > final:
            # exchange_calendars covers ~20 years back and 1 year ahead by default; widen it (holidays
            # past its horizon are unknown: those days count as sessions)
            import exchange_calendars as xc

            try:
                self._cal = xc.get_calendar(
                    self.name,
                    start=min(start, first).tz_localize(None).floor("D") - pd.Timedelta(days=7),
                    end=max(end, final).tz_localize(None).ceil("D") + pd.Timedelta(days=7),
                )
            except ValueError as exc:  # e.g. XSHG's holidays are recorded only a year or so ahead
                raise OutOfCalendar(str(exc)) from exc
        return start, end

    def _intraday_grid(self, last: pd.Timestamp, interval_ns: int, span: int) -> np.ndarray:
        # ~1.6 calendar days per session covers weekends and most holiday runs
        start, end = self._bounds(last, int(span * 1.6) + 7)
        start = max(start, self._cal.first_minute)
        end = min(end, self._cal.last_minute)
        index = self._cal.trading_index(
            start,
            end,
            pd.Timedelta(interval_ns, unit="ns"),
            intervals=False,
            closed="right" if self.label == "end" else "left",
            force_close=self.label == "end",
            force_break_close=self.label == "end",
        )
        return np.asarray(index.asi8, dtype=np.int64)

    def _daily_grid(self, last: pd.Timestamp, span: int) -> np.ndarray:
        start, end = self._bounds(last, int(span * 1.6) + 7)
        sessions = self._cal.sessions_in_range(
            max(start.tz_localize(None), self._cal.first_session),
            min(end.tz_localize(None), self._cal.last_session),
        )
        time_of_day = last.value - last.floor("D").value
        stamps = np.asarray(sessions.asi8, dtype=np.int64)
        if sessions.tz is not None:  # sessions are naive dates; guard against a tz-aware variant
            stamps = np.asarray(sessions.tz_localize(None).asi8, dtype=np.int64)
        return stamps + time_of_day


def build_calendar(name: str | None, label: BarLabel = "end") -> HorizonCalendar:
    """The calendar ``KRONOS_MODEL__EXCHANGE_CALENDAR`` names (unset or ``24/7``: continuous)."""
    if not name or name.strip().upper() == CONTINUOUS:
        return ContinuousCalendar()
    return ExchangeCalendar(name.strip(), label)
