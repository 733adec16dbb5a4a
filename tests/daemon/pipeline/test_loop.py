"""The loop's logic on the in-process bus and store (no services): rounds, skips, failures, metrics."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from daemon.io.bus import InMessage, Partition
from daemon.io.memory import MemoryBroker, MemoryInput, MemoryOutput
from daemon.io.messages import forecast_id, parse_bar
from daemon.pipeline.plan import commit_offsets, next_offsets, plan_rounds
from daemon.settings import Settings, load_settings
from daemon.state.base import StateUpdate
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




def _parts(broker: MemoryBroker, settings: Settings) -> dict[str, object]:
    return {
        "bus_in": MemoryInput(broker, "in", "g"),
        "bus_out": MemoryOutput(broker),
        "store": MemoryStateStore("kronos", settings.model.max_context),
    }


def _msg(offset: int, record: dict[str, object], partition: int = 0) -> tuple[InMessage, object]:
    key, value = encode(record)
    msg = InMessage("in", partition, offset, key, value, 0, [])
    return msg, parse_bar(key, value)


def test_plan_rounds_orders_per_symbol_and_skips() -> None:
    m = timedelta(minutes=1)
    items = [
        _msg(0, bar_record("A", T0, 1.0)),
        _msg(1, bar_record("A", T0 + m, 1.0)),
        _msg(2, bar_record("B", T0, 1.0)),
        _msg(3, bar_record("A", T0 + m, 1.0)),  # duplicate within the batch
        _msg(4, bar_record("A", T0, 1.0)),  # out of order within the batch
        _msg(5, bar_record("B", T0 - m, 1.0)),  # older than stored
        _msg(6, bar_record("A", T0 + 5 * m, 1.0)),  # a gap is fine
    ]
    stored = {"B": None, "A": None}
    rounds, skipped = plan_rounds(items, stored)  # type: ignore[arg-type]
    assert [[m.offset for m, _ in r] for r in rounds] == [[0, 2], [1], [6]]
    assert [(i[0].offset, why) for i, why in skipped] == [
        (3, "duplicate"),
        (4, "out_of_order"),
        (5, "out_of_order"),
    ]


def test_next_offsets_is_last_plus_one_per_partition() -> None:
    msgs = [_msg(o, bar_record("A", T0, 1.0), p)[0] for p, o in [(0, 3), (0, 4), (1, 9), (0, 5)]]
    assert next_offsets(msgs) == {Partition("in", 0): 6, Partition("in", 1): 10}


def test_a_batch_cut_short_commits_up_to_its_first_message_not_done() -> None:
    msgs = [_msg(o, bar_record("A", T0, 1.0), p)[0] for p, o in [(0, 3), (0, 4), (1, 9), (0, 5), (1, 10)]]
    assert commit_offsets(msgs, [msgs[1], msgs[3]]) == {Partition("in", 0): 4, Partition("in", 1): 11}
    assert commit_offsets(msgs, []) == next_offsets(msgs)


async def test_stop_mid_batch_commits_what_is_done_and_the_next_daemon_goes_on() -> None:
    settings = memory_settings()
    broker = MemoryBroker(default_partitions=1)
    for key, value in bar_series("A", 40):  # one symbol: one fetch of 40 rounds
        broker.append("in", key, value)
    store = MemoryStateStore("kronos", settings.model.max_context)
    parts = {"bus_in": MemoryInput(broker, "in", "g"), "bus_out": MemoryOutput(broker), "store": store}
    async with running_daemon(settings, StubForecaster(max_context=16, delay_ms=20), **parts):
        await wait_until(lambda: len(broker.messages("out")) >= 5, 10, "some forecasts")
    first = len(broker.messages("out"))
    assert first < 40
    assert broker.committed("g", Partition("in", 0)) == first  # the done prefix, no more, no less

    parts = {"bus_in": MemoryInput(broker, "in", "g"), "bus_out": MemoryOutput(broker), "store": store}
    async with running_daemon(settings, StubForecaster(max_context=16), **parts):
        await wait_until(lambda: len(broker.messages("out")) == 40, 10, "the rest")
    out = [json.loads(m.value or b"") for m in broker.messages("out")]
    assert len({f["id"] for f in out}) == 40
    assert [f["context_bars"] for f in out] == [min(i + 1, 16) for i in range(40)]


async def test_every_valid_bar_gets_one_forecast_in_order() -> None:
    settings = memory_settings()
    broker = MemoryBroker(default_partitions=2)
    records = interleave(bar_series("A", 20), bar_series("B", 20), bar_series("C", 5))
    for key, value in records:
        broker.append("in", key, value)
    fc = StubForecaster(max_context=16)
    async with running_daemon(settings, fc, **_parts(broker, settings)) as d:
        await wait_until(lambda: len(broker.messages("out")) == 45, 10, "45 forecasts")
        store = d.store
        assert isinstance(store, MemoryStateStore)
        assert store.ring_length("A") == 16  # capped at max_context
        latest = await store.latest_forecast("B")
    out = [json.loads(m.value or b"") for m in broker.messages("out")]
    assert len({f["id"] for f in out}) == 45
    by_symbol: dict[str, list[str]] = {}
    for f in out:
        by_symbol.setdefault(f["symbol"], []).append(f["as_of"])
    assert all(ts == sorted(ts) for ts in by_symbol.values())
    assert latest is not None and latest["as_of"] == max(by_symbol["B"])
    # rounds: one batched call per round, at most one window per symbol per call
    assert all(len(set(call)) == len(call) for call in fc.calls)
    assert max(map(len, fc.calls)) == 3
    assert [f["context_bars"] for f in out if f["symbol"] == "A"] == [min(i + 1, 16) for i in range(20)]
    assert metric(d, "kronos_forecasts_out_total") == 45
    assert metric(d, "kronos_bars_in_total") == 45
    assert broker.committed("g", Partition("in", 0)) + broker.committed("g", Partition("in", 1)) == 45


async def test_forecast_failure_dead_letters_only_that_bar() -> None:
    settings = memory_settings()
    broker = MemoryBroker(default_partitions=1)
    for key, value in interleave(bar_series("A", 3), bar_series("BAD", 3)):
        broker.append("in", key, value)
    fc = StubForecaster(max_context=16, fail_symbols=["BAD"])
    async with running_daemon(settings, fc, **_parts(broker, settings)) as d:
        await wait_until(lambda: len(broker.messages("dlq")) == 3, 10, "3 dead letters")
        await wait_until(lambda: len(broker.messages("out")) == 3, 10, "3 forecasts")
        assert metric(d, "kronos_invalid_messages_total", kind="forecast") == 3
    dead = broker.messages("dlq")
    assert all(dict(m.headers)["reason"].startswith(b"forecast failed: RuntimeError") for m in dead)
    assert [m.value for m in dead] == [v for k, v in bar_series("BAD", 3)]
    assert {json.loads(m.value or b"")["symbol"] for m in broker.messages("out")} == {"A"}


async def test_incremental_mode_hands_back_the_token_cache() -> None:
    settings = memory_settings(mode="incremental")
    broker = MemoryBroker(default_partitions=1)
    for key, value in bar_series("A", 30):
        broker.append("in", key, value)
    fc = StubForecaster(mode="incremental", max_context=16)  # raises if a stale cache comes back
    async with running_daemon(settings, fc, **_parts(broker, settings)) as d:
        await wait_until(lambda: len(broker.messages("out")) == 30, 10, "30 forecasts")
        states = await d.store.load(["A"])  # type: ignore[union-attr]
    state = states["A"]
    assert state.token_state is not None and len(state.token_state) == 16
    assert state.token_state.last_ts == state.last_ts and state.token_version == "stub-1"
    assert not broker.messages("dlq")


async def test_replayed_bar_gives_the_same_forecast() -> None:
    settings = memory_settings()
    records = bar_series("A", 10)
    outs = []
    for _ in range(2):  # two independent daemons over the same input
        broker = MemoryBroker(default_partitions=1)
        for key, value in records:
            broker.append("in", key, value)
        async with running_daemon(settings, StubForecaster(max_context=16), **_parts(broker, settings)):
            await wait_until(lambda b=broker: len(b.messages("out")) == 10, 10, "10 forecasts")  # type: ignore[misc]
        outs.append([json.loads(m.value or b"") for m in broker.messages("out")])
    assert outs[0][0]["id"] == forecast_id("A", parse_bar(*records[0]).ts_ns, "stub-1")
    for a, b in zip(*outs, strict=True):
        assert (a["id"], a["mean"], a["quantiles"], a["seed"]) == (
            b["id"],
            b["mean"],
            b["quantiles"],
            b["seed"],
        )


async def test_a_newer_bar_from_another_writer_is_respected() -> None:
    settings = memory_settings()
    broker = MemoryBroker(default_partitions=1)
    store = MemoryStateStore("kronos", settings.model.max_context)
    bars = bar_series("A", 8)
    broker.append("in", *bars[0])
    parts = {"bus_in": MemoryInput(broker, "in", "g"), "bus_out": MemoryOutput(broker), "store": store}
    async with running_daemon(settings, StubForecaster(max_context=16), **parts) as d:
        await wait_until(lambda: len(broker.messages("out")) == 1, 10, "the first forecast")
        # a stale owner (or a retried write) stores bars 2-5 behind this daemon's back
        for key, value in bars[2:6]:
            await store.apply([StateUpdate(parse_bar(key, value), None, b"{}", "stub-1", "elsewhere")])
        for key, value in bars[1:]:
            broker.append("in", key, value)
        await wait_until(lambda: broker.committed("g", Partition("in", 0)) == 8, 10, "all committed")
        assert metric(d, "kronos_state_conflicts_total") == 1  # bar 2: published, then refused
        # bars 3-6 after the reload: 3-5 are older than the stored bar 6, bar 6 is the same
        assert metric(d, "kronos_skipped_total", reason="out_of_order") == 3
        assert metric(d, "kronos_skipped_total", reason="duplicate") == 1
    out = [json.loads(m.value or b"") for m in broker.messages("out")]
    assert [f["as_of"][11:16] for f in out] == ["01:30", "01:31", "01:36", "01:37"]
    state = (await store.load(["A"]))["A"]
    assert [parse_bar(*b).ts_ns for b in bars[:1] + bars[2:]] == list(state.timestamps)


@pytest.mark.parametrize(("refresh_every", "warned"), [(64, True), (16, False)])
async def test_incremental_mode_warns_when_a_refresh_would_keep_too_few_bars(refresh_every: int, warned: bool) -> None:
    """max_context 64, horizon 3: refreshing every 64 bars would keep one bar of context (a zero std:
    every next bar refreshes again), so the daemon says which value to set; every 16 bars is fine."""
    import structlog

    settings = load_settings(
        kafka={"input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq", "group_id": "g"},
        model={"max_context": 64, "horizon": 3}, batch={"max_wait_ms": 10}, http_port=None,
        mode="incremental", refresh_every_bars=refresh_every,
    )  # fmt: skip
    broker = MemoryBroker(default_partitions=1)
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(settings, StubForecaster(mode="incremental", max_context=64), **_parts(broker, settings)):
            pass
    found = [e for e in logs if e["event"].startswith("incremental mode keeps too few bars")]
    assert bool(found) == warned
    if warned:
        assert "KRONOS_REFRESH_EVERY_BARS" in found[0]["event"] and found[0]["event"].endswith("= 45")
