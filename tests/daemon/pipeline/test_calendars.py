"""Horizon timestamps on exchange calendars (XSHG lunch break and nights, XNYS, daily bars, 24/7)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from daemon.errors import ConfigError
from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.pipeline.calendars import ContinuousCalendar, ExchangeCalendar, build_calendar
from daemon.settings import load_settings
from daemon.state.memory import MemoryStateStore

pytestmark = pytest.mark.timeout(60)

FIVE_MIN = 300 * 10**9


def _ns(text: str, tz: str = "Asia/Shanghai") -> int:
    return pd.Timestamp(text, tz=tz).tz_convert("UTC").value


def _local(values: list[int], tz: str = "Asia/Shanghai") -> list[str]:
    return [pd.Timestamp(v, tz="UTC").tz_convert(tz).strftime("%m-%d %H:%M") for v in values]


def test_xshg_skips_the_lunch_break() -> None:
    cal = build_calendar("XSHG")
    got = _local(cal.future(_ns("2024-08-29 11:20"), FIVE_MIN, 4))
    assert got == ["08-29 11:25", "08-29 11:30", "08-29 13:05", "08-29 13:10"]


def test_xshg_skips_nights_weekends_and_holidays() -> None:
    cal = build_calendar("XSHG")
    # Friday's close -> Monday's open
    assert _local(cal.future(_ns("2024-08-30 14:55"), FIVE_MIN, 3)) == [
        "08-30 15:00",
        "09-02 09:35",
        "09-02 09:40",
    ]
    # the National Day holiday (2024-10-01 .. 10-07)
    assert _local(cal.future(_ns("2024-09-30 15:00"), FIVE_MIN, 2)) == ["10-08 09:35", "10-08 09:40"]


def test_bars_labelled_by_their_start() -> None:
    cal = build_calendar("XSHG", "start")
    assert _local(cal.future(_ns("2024-08-29 11:20"), FIVE_MIN, 3)) == [
        "08-29 11:25",
        "08-29 13:00",
        "08-29 13:05",
    ]
    assert _local(cal.future(_ns("2024-08-29 14:55"), FIVE_MIN, 1)) == ["08-30 09:30"]


def test_xnys_hourly_bars_end_with_the_short_last_bar() -> None:
    cal = build_calendar("XNYS")
    got = _local(cal.future(_ns("2024-08-29 14:30", "America/New_York"), 3600 * 10**9, 3), "America/New_York")
    assert got == ["08-29 15:30", "08-29 16:00", "08-30 10:30"]


def test_daily_bars_step_through_sessions() -> None:
    cal = build_calendar("XSHG")
    got = cal.future(pd.Timestamp("2024-09-27", tz="UTC").value, 86_400 * 10**9, 3)
    assert [pd.Timestamp(v).strftime("%Y-%m-%d") for v in got] == ["2024-09-30", "2024-10-08", "2024-10-09"]


def test_weekly_bars_keep_their_grid() -> None:
    week = 7 * 86_400 * 10**9
    last = pd.Timestamp("2024-09-27", tz="UTC").value
    assert build_calendar("XSHG").future(last, week, 2) == [last + week, last + 2 * week]


def test_a_long_horizon_spans_many_sessions() -> None:
    cal = build_calendar("XSHG")
    got = cal.future(_ns("2024-08-29 15:00"), FIVE_MIN, 48 * 50)  # 50 sessions of 48 bars
    assert len(got) == 48 * 50 and got == sorted(set(got))
    # 08-30, 19 September sessions (Mid-Autumn 09-16/17 off), 18 October (National Day 10-01..07 off), 12 November
    assert _local(got[-1:]) == ["11-18 15:00"]


def test_continuous_is_the_default() -> None:
    assert isinstance(build_calendar(None), ContinuousCalendar)
    assert isinstance(build_calendar("24/7"), ContinuousCalendar)
    assert ContinuousCalendar().future(100, 10, 3) == [110, 120, 130]
    assert load_settings().model.exchange_calendar is None


def test_unknown_calendar_is_refused_with_the_variable() -> None:
    with pytest.raises(ConfigError, match="KRONOS_MODEL__EXCHANGE_CALENDAR"):
        load_settings(model={"exchange_calendar": "XSHX"})
    with pytest.raises(ConfigError, match="XSHX"):
        ExchangeCalendar("XSHX")
    assert load_settings(model={"exchange_calendar": "24/7"}).model.exchange_calendar is None


def test_past_the_calendars_range_the_grid_continues() -> None:
    cal = build_calendar("XSHG")
    last = _ns("2030-03-01 10:00")
    assert cal.future(last, FIVE_MIN, 2) == [last + FIVE_MIN, last + 2 * FIVE_MIN]


async def test_the_daemons_forecasts_follow_the_calendar() -> None:
    from tests.support.launcher import bar_record, encode, running_daemon, wait_until
    from tests.support.stub_forecaster import StubForecaster

    settings = load_settings(
        kafka={"input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq", "group_id": "g"},
        model={"max_context": 16, "horizon": 4, "exchange_calendar": "XSHG"},
        batch={"max_batch_size": 1000, "max_wait_ms": 10},
        http_port=None,
    )
    broker = MemoryBroker(default_partitions=1)
    for local in ("2024-08-29 11:15", "2024-08-29 11:20"):
        when = pd.Timestamp(local, tz="Asia/Shanghai").tz_convert("UTC").to_pydatetime()
        broker.append("in", *encode(bar_record("A", when, 10.0)))
    fc = StubForecaster(max_context=16)
    parts = {"bus_in": MemoryInput(broker, "in", "g"), "bus_out": MemoryOutput(broker)}
    store = MemoryStateStore("kronos", 16)
    async with running_daemon(settings, fc, store=store, **parts):
        await wait_until(lambda: len(broker.messages("out")) == 2, 10, "2 forecasts")
    last = json.loads(broker.messages("out")[-1].value or b"")
    stamps = [pd.Timestamp(t).value for t in last["timestamps"]]
    assert _local(stamps) == ["08-29 11:25", "08-29 11:30", "08-29 13:05", "08-29 13:10"]
