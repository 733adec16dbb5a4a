"""Faults on the in-process bus and store (pure pipeline logic, no services): poison messages, timestamps out of
range or in the future, skipped and replayed bars, failing dead-letter sends, a failing series."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from daemon.errors import BusError, InvalidBar
from daemon.io.bus import Headers, Partition
from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.io.messages import check_bar_time, forecast_id, parse_bar
from daemon.state.memory import MemoryStateStore
from tests.support.launcher import (
    T0,
    bar_record,
    bar_series,
    encode,
    interleave,
    memory_settings,
    metric,
    running_daemon,
    wait_until,
)
from tests.support.stub_forecaster import StubForecaster

pytestmark = pytest.mark.timeout(30)

M = timedelta(minutes=1)


def _parts(broker: MemoryBroker, store: MemoryStateStore, output: MemoryOutput | None = None) -> dict[str, object]:
    return {"bus_in": MemoryInput(broker, "in", "g"), "bus_out": output or MemoryOutput(broker), "store": store}


def _fill(broker: MemoryBroker, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
    for key, value in records:
        broker.append("in", key, value)


def _out(broker: MemoryBroker) -> list[dict[str, object]]:
    return [json.loads(m.value or b"") for m in broker.messages("out")]


def _reasons(broker: MemoryBroker) -> list[str]:
    return [dict(m.headers)["reason"].decode() for m in broker.messages("dlq")]


# -- fault 1: timestamps that cannot be represented ----------------------------------------------


@pytest.mark.parametrize("ts", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2400-01-01T00:00:00Z"])
def test_a_timestamp_outside_the_nanosecond_range_is_invalid(ts: str) -> None:
    with pytest.raises(InvalidBar, match="outside") as err:
        parse_bar(*encode(bar_record("Z", T0, 10.0, ts=ts)))
    assert err.value.kind == "ts"


async def test_unrepresentable_timestamps_are_dead_lettered_and_the_symbol_goes_on() -> None:
    settings = memory_settings()
    broker = MemoryBroker(default_partitions=1)
    good = bar_series("Z", 4)
    _fill(
        broker,
        good[:2]
        + [
            encode(bar_record("Z", T0, 10.0, ts="9999-12-31T23:59:59Z")),
            encode(bar_record("Z", T0, 10.0, ts="0001-01-01T00:00:00Z")),
        ]
        + good[2:],
    )
    store = MemoryStateStore("kronos", 16)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)) as d:
        await wait_until(lambda: len(broker.messages("out")) == 4, 10, "4 forecasts")
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 6, 10, "all committed")
        assert metric(d, "kronos_invalid_messages_total", kind="ts") == 2
    assert all("outside" in r for r in _reasons(broker))


# -- fault 2: a bar far in the future ------------------------------------------------------------


def test_the_future_bound_is_relative_to_the_broker_timestamp_or_the_wall_clock() -> None:
    now = time.time()
    bar = parse_bar(*encode(bar_record("F", datetime.fromtimestamp(now + 600, UTC), 10.0)))
    with pytest.raises(InvalidBar, match="ahead of the message's broker timestamp") as err:
        check_bar_time(bar, int(now * 1e3), now, 300.0)
    assert err.value.kind == "future"
    check_bar_time(bar, int((now + 400) * 1e3), now, 300.0)  # the broker's clock is the reference
    with pytest.raises(InvalidBar, match="ahead of the wall clock"):
        check_bar_time(bar, -1, now, 300.0)  # no broker timestamp: the wall clock
    check_bar_time(bar, int(now * 1e3), now, None)  # bound disabled


async def test_a_bar_far_in_the_future_is_dead_lettered_and_does_not_silence_the_symbol() -> None:
    settings = memory_settings(max_future_s=300)
    broker = MemoryBroker(default_partitions=1)
    good = bar_series("F", 6)
    future = encode(bar_record("F", datetime.now(UTC) + timedelta(days=30), 10.0))
    _fill(broker, good[:3] + [future] + good[3:])
    store = MemoryStateStore("kronos", 16)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)) as d:
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 7, 10, "all committed")
        assert metric(d, "kronos_invalid_messages_total", kind="future") == 1
        assert metric(d, "kronos_skipped_total", reason="out_of_order") == 0
    assert len(_out(broker)) == 6  # every valid bar after the future one was forecast
    assert "ahead of" in _reasons(broker)[0]


# -- skipped bars: counted by reason, optionally dead-lettered; replays told apart ---------------


async def test_skipped_bars_are_dead_lettered_when_asked() -> None:
    settings = memory_settings(dead_letter_skipped=True)
    broker = MemoryBroker(default_partitions=1)
    bars = [encode(bar_record("S", T0 + i * M, 10.0)) for i in range(4)]
    _fill(broker, bars + [bars[3], bars[1]])  # a duplicate, then an out-of-order bar
    store = MemoryStateStore("kronos", 16)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)) as d:
        await wait_until(lambda: len(broker.messages("dlq")) == 2, 10, "2 dead letters")
        assert metric(d, "kronos_skipped_total", reason="duplicate") == 1
        assert metric(d, "kronos_skipped_total", reason="out_of_order") == 1
    kinds = [dict(m.headers)["reason_kind"] for m in broker.messages("dlq")]
    assert kinds == [b"duplicate", b"out_of_order"]
    assert [int(dict(m.headers)["source_offset"]) for m in broker.messages("dlq")] == [4, 5]


async def test_a_replayed_bar_counts_as_replayed_not_as_out_of_order() -> None:
    settings = memory_settings(dead_letter_skipped=True)
    broker = MemoryBroker(default_partitions=1)
    _fill(broker, interleave(bar_series("R1", 5), bar_series("R2", 5)))
    store = MemoryStateStore("kronos", 16)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)):
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 10, 10, "all committed")
    broker.commit("g", {Partition("in", 0): 0})  # the offsets went back: everything is replayed
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)) as d:
        await wait_until(lambda: metric(d, "kronos_skipped_total", reason="replayed") == 10, 10, "replays")
        assert metric(d, "kronos_skipped_total", reason="out_of_order") == 0
        assert metric(d, "kronos_skipped_total", reason="duplicate") == 0
    assert len(_out(broker)) == 10 and not broker.messages("dlq")  # replays are not dead-lettered


# -- fault 3: a dead-letter send that fails ------------------------------------------------------


class _RefusingOutput(MemoryOutput):
    """Refuses dead letters over ``limit`` bytes (value, key and headers), like a broker's size limit."""

    def __init__(self, broker: MemoryBroker, limit: int, refuse_all: bool = False) -> None:
        super().__init__(broker)
        self.limit = limit
        self.refuse_all = refuse_all

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> None:
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers or ())
        if topic == "dlq" and (self.refuse_all or size > self.limit):
            raise BusError(f"publishing to {topic!r} failed: MessageSizeTooLargeError ({size} bytes)")
        await super().send(topic, key, value, headers)


async def test_an_oversize_dead_letter_is_sent_truncated_with_a_reference_to_the_original() -> None:
    settings = memory_settings()
    broker = MemoryBroker(default_partitions=1)
    good = bar_series("O", 3)
    huge = (b"O", b'{"symbol": "O", "junk": "' + b"x" * 50_000 + b'"')
    _fill(broker, good[:1] + [huge] + good[1:])
    store = MemoryStateStore("kronos", 16)
    output = _RefusingOutput(broker, limit=20_000)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store, output)) as d:
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 4, 10, "all committed")
        assert metric(d, "kronos_dead_letters_truncated_total") == 1
    assert len(_out(broker)) == 3
    (dead,) = broker.messages("dlq")
    headers = dict(dead.headers)
    assert len(dead.value or b"") < 20_000 and headers["truncated"] == b"true"
    assert headers["source_offset"] == b"1" and headers["source_partition"] == b"0"
    assert headers["original_value_bytes"] == str(len(huge[1])).encode()
    assert headers["reason"].startswith(b"malformed JSON")


async def test_a_dead_letter_topic_that_refuses_everything_does_not_stop_the_consumer() -> None:
    settings = memory_settings()
    broker = MemoryBroker(default_partitions=1)
    _fill(broker, bar_series("P", 2) + [(b"P", b"not json")] + bar_series("P", 4)[2:])
    store = MemoryStateStore("kronos", 16)
    output = _RefusingOutput(broker, limit=0, refuse_all=True)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store, output)) as d:
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 5, 10, "all committed")
        assert metric(d, "kronos_dead_letters_failed_total") == 1
    assert len(_out(broker)) == 4


# -- no single message or series stops the consumer ----------------------------------------------


async def test_an_unexpected_error_while_handling_one_message_dead_letters_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import daemon.pipeline.round as loop_module

    real = loop_module.horizon_ns

    def exploding(last_ns: int, interval_ns: int, horizon: int) -> list[int]:
        if last_ns == parse_bar(*bar_series("E", 3)[1]).ts_ns:
            raise OverflowError("injected: this bar breaks the window")
        return real(last_ns, interval_ns, horizon)

    monkeypatch.setattr(loop_module, "horizon_ns", exploding)
    settings = memory_settings()
    broker = MemoryBroker(default_partitions=1)
    _fill(broker, interleave(bar_series("E", 3), bar_series("OK", 3, start=T0 + timedelta(hours=1))))
    store = MemoryStateStore("kronos", 16)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)) as d:
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 6, 10, "all committed")
        assert metric(d, "kronos_invalid_messages_total", kind="error") == 1
    assert len(_out(broker)) == 5
    (dead,) = broker.messages("dlq")
    assert b"OverflowError" in dict(dead.headers)["reason"]



# -- health: readiness needs partitions; liveness fails when stuck, not when idle ------------------


class _NoPartitions(MemoryInput):
    """A group member the group gave nothing (more replicas than partitions)."""

    def assignment(self) -> set[Partition]:
        return set()


async def test_not_ready_while_the_consumer_owns_no_partition() -> None:
    settings = memory_settings()
    broker = MemoryBroker(default_partitions=1)
    parts = _parts(broker, MemoryStateStore("kronos", 16))
    parts["bus_in"] = _NoPartitions(broker, "in", "g")
    async with running_daemon(settings, StubForecaster(max_context=16), **parts) as d:
        await asyncio.sleep(0.1)
        ok, details = d.ready()
        assert not ok and details["partitions"] == []


async def test_liveness_fails_while_the_loop_is_stuck_not_while_it_is_idle() -> None:
    settings = memory_settings(health_stale_s=0.5)
    broker = MemoryBroker(default_partitions=1)
    forecaster = StubForecaster(max_context=16, delay_ms=2500)
    async with running_daemon(settings, forecaster, **_parts(broker, MemoryStateStore("kronos", 16))) as d:
        await asyncio.sleep(1.5)  # idle: nothing to read for three times the stale bound
        assert d.live()[0] and d.ready()[0]
        _fill(broker, bar_series("L", 1))
        await wait_until(lambda: forecaster.calls, 5, "the model call to start")
        await asyncio.sleep(1.0)  # the call takes 2.5 s: the loop is stuck in it
        ok, details = d.live()
        assert not ok and details["last_tick_age_s"] >= 0.5
        await wait_until(lambda: broker.messages("out"), 5, "the forecast")
        await wait_until(lambda: d.live()[0], 5, "live again")


# -- fault 5: state lost in the store (Redis restarted empty) ------------------------------------


def _run_all(records: Sequence[tuple[bytes | None, bytes | None]]) -> MemoryBroker:
    broker = MemoryBroker(default_partitions=1)
    _fill(broker, records)
    return broker


async def test_state_lost_while_stopped_is_restored_from_the_input_topic() -> None:
    settings = memory_settings()
    a, b = bar_series("LA", 13), bar_series("LB", 13)
    broker = _run_all(interleave(a[:10], b[:10]))
    store = MemoryStateStore("kronos", 16)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)):
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 20, 10, "all committed")
    store.wipe()  # Redis restarted empty
    _fill(broker, interleave(a[10:], b[10:]))
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)) as d:
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 26, 10, "all committed")
        assert metric(d, "kronos_state_restored_total") == 2
    reference = _run_all(interleave(a, b))  # the same bars, nothing lost
    ref_store = MemoryStateStore("kronos", 16)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(reference, ref_store)):
        await wait_until(lambda: reference.committed("g", Partition("in", 0)) == 26, 10, "reference")
    after = _out(broker)[20:]
    assert [f["context_bars"] for f in after] == [11, 11, 12, 12, 13, 13]
    assert after == [
        {**f, "latency_ms": g["latency_ms"], "created_at": g["created_at"]}
        for f, g in zip(_out(reference)[20:], after, strict=True)
    ]  # same ids, same numbers as without the loss
    assert store.ring_length("LA") == 13


async def test_state_lost_under_a_running_daemon_is_written_back() -> None:
    settings = memory_settings()
    series = bar_series("LR", 14)
    broker = _run_all(series[:10])
    store = MemoryStateStore("kronos", 16)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)) as d:
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 10, 10, "first 10")
        store.wipe()
        _fill(broker, series[10:])
        await broker.notify()
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 14, 10, "the rest")
        assert metric(d, "kronos_state_lost_total") == 1
    assert [f["context_bars"] for f in _out(broker)[10:]] == [11, 12, 13, 14]
    assert store.ring_length("LR") == 14  # not 4: the ring was written back before the next bar


async def test_a_context_that_cannot_be_restored_is_flagged_and_gets_its_own_id() -> None:
    settings = memory_settings(restore_lookback_s=0.001)  # the topic "no longer holds" the older bars
    series = bar_series("LX", 8)
    broker = _run_all(series[:5])
    store = MemoryStateStore("kronos", 16)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)):
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 5, 10, "first 5")
    store.wipe()
    time.sleep(0.01)
    _fill(broker, series[5:])
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)):
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 8, 10, "the rest")
    out = _out(broker)
    assert all(f["context_complete"] for f in out[:5])
    after = out[5:]
    assert [(f["context_complete"], f["context_bars"]) for f in after] == [(False, 1), (False, 2), (False, 3)]
    for f, (key, value) in zip(after, series[5:], strict=True):
        assert f["id"] != forecast_id("LX", parse_bar(key, value).ts_ns, "stub-1")


async def test_a_symbol_whose_stored_state_is_unreadable_is_dead_lettered_alone() -> None:
    settings = memory_settings()
    store = MemoryStateStore("kronos", 16)
    broker = _run_all(bar_series("GOOD", 1))
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)):
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 1, 10, "the first bar")
    store._records["GOOD"].bars.append(b"[not a bar")  # noqa: SLF001 (a corrupt record)
    broker.commit("g", {Partition("in", 0): 1})
    _fill(broker, interleave(bar_series("GOOD", 3)[1:], bar_series("FINE", 2)))
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)) as d:
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 5, 10, "all committed")
        assert metric(d, "kronos_invalid_messages_total", kind="state") == 2
    assert [f["symbol"] for f in _out(broker)[1:]] == ["FINE", "FINE"]
    assert all(b"unreadable bar" in dict(m.headers)["reason"] for m in broker.messages("dlq"))
