"""Faults of issue #9 on the in-process bus and store (no services): poison messages, timestamps out of
range or in the future, skipped and replayed bars, failing dead-letter sends, a failing series."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from daemon_helpers import T0, bar_record, bar_series, encode, interleave, metric, running_daemon, wait_until
from stub_forecaster import StubForecaster

from daemon.bus import Headers, Partition
from daemon.bus_memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.errors import BusError, InvalidBar
from daemon.schemas import check_bar_time, parse_bar
from daemon.settings import Settings, load_settings
from daemon.state_memory import MemoryStateStore

pytestmark = pytest.mark.timeout(30)

M = timedelta(minutes=1)


def _settings(**over: object) -> Settings:
    return load_settings(
        kafka={"input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq", "group_id": "g"},
        model={"max_context": 16, "horizon": 3},
        batch={"max_batch_size": 1000, "max_wait_ms": 10},
        http_port=None,
        **over,
    )


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
    settings = _settings()
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
        assert metric(d, "kronos_invalid_total", kind="ts") == 2
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
    settings = _settings(max_future_s=300)
    broker = MemoryBroker(default_partitions=1)
    good = bar_series("F", 6)
    future = encode(bar_record("F", datetime.now(UTC) + timedelta(days=30), 10.0))
    _fill(broker, good[:3] + [future] + good[3:])
    store = MemoryStateStore("kronos", 16)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)) as d:
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 7, 10, "all committed")
        assert metric(d, "kronos_invalid_total", kind="future") == 1
        assert metric(d, "kronos_skipped_total", reason="out_of_order") == 0
    assert len(_out(broker)) == 6  # every valid bar after the future one was forecast
    assert "ahead of" in _reasons(broker)[0]


# -- skipped bars: counted by reason, optionally dead-lettered; replays told apart ---------------


async def test_skipped_bars_are_dead_lettered_when_asked() -> None:
    settings = _settings(dead_letter_skipped=True)
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
    settings = _settings(dead_letter_skipped=True)
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
    settings = _settings()
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
    settings = _settings()
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
    import daemon.loop as loop_module

    real = loop_module.horizon_ns

    def exploding(last_ns: int, interval_ns: int, horizon: int) -> list[int]:
        if last_ns == parse_bar(*bar_series("E", 3)[1]).ts_ns:
            raise OverflowError("injected: this bar breaks the window")
        return real(last_ns, interval_ns, horizon)

    monkeypatch.setattr(loop_module, "horizon_ns", exploding)
    settings = _settings()
    broker = MemoryBroker(default_partitions=1)
    _fill(broker, interleave(bar_series("E", 3), bar_series("OK", 3, start=T0 + timedelta(hours=1))))
    store = MemoryStateStore("kronos", 16)
    async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, store)) as d:
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 6, 10, "all committed")
        assert metric(d, "kronos_invalid_total", kind="error") == 1
    assert len(_out(broker)) == 5
    (dead,) = broker.messages("dlq")
    assert b"OverflowError" in dict(dead.headers)["reason"]

