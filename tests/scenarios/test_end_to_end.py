"""The daemon end to end against the session's real Kafka broker and Redis server (in this process)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from daemon.app import Daemon
from daemon.io.messages import parse_bar
from daemon.state.base import StateUpdate, bars_key
from daemon.state.redis import RedisStateStore
from kronos_core.stream_types import StreamForecaster
from tests.support.launcher import (
    T0,
    MakeForecaster,
    Topics,
    bar_record,
    bar_series,
    committed_offsets,
    daemon_settings,
    encode,
    end_offsets,
    expected_ids,
    forecasts,
    interleave,
    metric,
    produce,
    read_topic,
    running_daemon,
    wait_committed,
    wait_until,
)
from tests.support.stub_forecaster import StubForecaster

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(90)]


async def test_one_forecast_per_valid_bar_latest_in_redis_offsets_committed(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    forecaster: StreamForecaster,
) -> None:
    symbols = ["600977.SH", "000001.SZ", "AAPL"]
    series = {s: bar_series(s, 50, seed=i) for i, s in enumerate(symbols)}
    await produce(kafka_bootstrap, topics.input, interleave(*series.values()))
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics)

    async with running_daemon(settings, forecaster) as d:
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 150))
        ends = await wait_committed(kafka_bootstrap, group_id, topics.input)
        latest = {s: await d.store.latest_forecast(s) for s in symbols}  # type: ignore[union-attr]
        assert metric(d, "kronos_forecasts_out_total") == 150
        assert metric(d, "kronos_bars_in_total") == 150

    assert len(out) == 150
    assert len({f["id"] for f in out}) == 150
    assert sum(ends.values()) == 150
    version = forecaster.model_version
    expected = expected_ids(series, version)
    assert {f["id"] for f in out} == expected
    for s in symbols:
        mine = [f for f in out if f["symbol"] == s]
        assert [f["as_of"] for f in mine] == sorted(f["as_of"] for f in mine)  # in bar order per symbol
        assert latest[s] == mine[-1]
        assert mine[-1]["context_bars"] == 50
        assert mine[-1]["timestamps"][0] > mine[-1]["as_of"]
    assert not await read_topic(kafka_bootstrap, topics.dead, 0, timeout_s=1)


async def test_invalid_messages_go_to_the_dead_letter_topic_and_the_consumer_goes_on(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    forecaster: StreamForecaster,
) -> None:
    m = timedelta(minutes=1)
    good = bar_series("GOOD", 6)
    bad: list[tuple[bytes | None, bytes | None]] = [
        (b"GOOD", b"{this is not json"),
        (
            b"GOOD",
            b'{"symbol":"GOOD","ts":"2024-06-18T09:00:00Z","open":NaN,"high":1,"low":1,"close":1,"volume":1}',
        ),
        (
            b"GOOD",
            b'{"symbol":"GOOD","ts":"2024-06-18T09:00:00Z","open":1,"high":Infinity,"low":1,"close":1,"volume":1}',
        ),
        encode(bar_record("GOOD", T0 + 100 * m, 10.0, close="10.0")),  # a string for a number
        encode(bar_record("GOOD", T0 + 100 * m, 10.0, ts="2024-06-18T09:00:00")),  # naive time
        encode(bar_record("GOOD", T0 + 100 * m, 10.0, high=1.0)),  # high below close
        encode(bar_record("GOOD", T0 + 100 * m, 10.0), key="OTHER"),  # key is not the symbol
        (b"GOOD", None),  # tombstone
    ]
    await produce(kafka_bootstrap, topics.input, good[:3] + bad + good[3:], headers=[("trace", b"t-1")])
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics)

    async with running_daemon(settings, forecaster) as d:
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 6))
        dead = await read_topic(kafka_bootstrap, topics.dead, len(bad))
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        invalid = sum(metric(d, "kronos_invalid_messages_total", kind=k) for k in ("json", "schema", "key", "empty"))
        assert invalid == len(bad)

    assert len(out) == 6  # the bars after the bad ones were processed too
    assert [(r.key, r.value) for r in dead] == bad  # original bytes, in order (one partition)
    reasons = [dict(r.headers)["reason"].decode() for r in dead]
    assert reasons[0].startswith("malformed JSON")
    assert "finite number" in reasons[1] and "finite number" in reasons[2]
    assert "close" in reasons[3] and "timezone" in reasons[4] and "inconsistent OHLC" in reasons[5]
    assert "differs from symbol" in reasons[6] and "empty" in reasons[7]
    first = dict(dead[0].headers)
    assert first["trace"] == b"t-1"  # the original headers travel along
    assert first["source_topic"] == topics.input.encode() and int(first["source_offset"]) == 3


async def test_duplicates_and_out_of_order_bars_are_skipped_and_a_gap_is_fine(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    forecaster: StreamForecaster,
) -> None:
    m = timedelta(minutes=1)
    bars = [encode(bar_record("GAP", T0 + i * m, 10.0 + i / 10)) for i in range(10)]
    late = [
        encode(bar_record("GAP", T0 + 9 * m, 99.0)),  # duplicate of the last bar
        encode(bar_record("GAP", T0 + 5 * m, 10.0)),  # out of order
        encode(bar_record("GAP", T0 + 13 * m, 11.0)),  # after a gap of three bars
        encode(bar_record("GAP", T0 + 13 * m, 11.0)),  # duplicate within the same fetch
        encode(bar_record("GAP", T0 + 14 * m, 11.1)),
    ]
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics)
    async with running_daemon(settings, forecaster) as d:
        await produce(kafka_bootstrap, topics.input, bars)
        await read_topic(kafka_bootstrap, topics.output, 10)
        await produce(kafka_bootstrap, topics.input, late)  # a later fetch: skips against stored state
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 12))
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        assert metric(d, "kronos_skipped_total", reason="duplicate") == 2
        assert metric(d, "kronos_skipped_total", reason="out_of_order") == 1

    assert len(out) == 12
    after_gap = out[10]
    assert after_gap["as_of"] == "2024-06-18T01:43:00Z"
    assert after_gap["interval_s"] == 60.0  # the gap does not stretch the interval
    assert after_gap["timestamps"][:2] == ["2024-06-18T01:44:00Z", "2024-06-18T01:45:00Z"]
    assert after_gap["context_bars"] == 11


async def test_graceful_restart_resumes_from_redis(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    make_forecaster: MakeForecaster,
) -> None:
    series = [bar_series(s, 30, seed=1) for s in ("A", "B")]
    first = interleave(*(s[:15] for s in series))
    second = interleave(*(s[15:] for s in series))
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics)

    async with running_daemon(settings, make_forecaster(64)):
        await produce(kafka_bootstrap, topics.input, first)
        await read_topic(kafka_bootstrap, topics.output, 30)
        await wait_committed(kafka_bootstrap, group_id, topics.input)
    async with running_daemon(settings, make_forecaster(64)) as d:
        await produce(kafka_bootstrap, topics.input, second)
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 60))
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        assert metric(d, "kronos_forecasts_out_total") == 30  # only the new bars: nothing replayed

    assert len(out) == 60 and len({f["id"] for f in out}) == 60
    for s in ("A", "B"):
        assert [f["context_bars"] for f in out if f["symbol"] == s] == list(range(1, 31))


async def test_ring_in_redis_stays_capped_at_max_context(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    make_forecaster: MakeForecaster,
) -> None:
    settings = daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics,
        model={"max_context": 512}, batch={"max_batch_size": 500},
    )  # fmt: skip
    records = bar_series("CAP", 600)
    await produce(kafka_bootstrap, topics.input, records)
    async with running_daemon(settings, StubForecaster(max_context=512)):  # about state: the stub suffices
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 600, timeout_s=60))
        await wait_committed(kafka_bootstrap, group_id, topics.input)
    client = aioredis.Redis.from_url(redis_url)
    try:
        key = bars_key(settings.redis.key_prefix, "CAP")
        assert await client.llen(key) == 512
        usage = await client.memory_usage(key)
        assert usage is not None and usage < 512 * 160
        ring = [json.loads(x)[0] for x in await client.lrange(key, 0, -1)]
    finally:
        await client.aclose()
    assert ring == [parse_bar(k, v).ts_ns for k, v in records[-512:]]
    assert len(out) == 600 and out[-1]["context_bars"] == 512


def _slow(forecaster: StreamForecaster) -> StreamForecaster:
    if isinstance(forecaster, StubForecaster):
        forecaster.delay_ms = 10  # the engine is slow enough by itself
    return forecaster


@pytest.mark.parametrize("pipeline", [False, True], ids=["plain", "pipelined"])
async def test_rebalance_between_two_daemons_loses_nothing(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    make_forecaster: MakeForecaster,
    pipeline: bool,
) -> None:
    """Pipelined, a fetch under way while the group rebalances is dropped and read again (the real
    broker resets the positions to the committed offsets): still one forecast per bar."""
    symbols = [f"S{i}" for i in range(6)]
    series = [bar_series(s, 40, seed=2) for s in symbols]
    settings = daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, batch={"max_batch_size": 8, "pipeline": pipeline}
    )
    async with running_daemon(settings, _slow(make_forecaster(64))) as a:
        await produce(kafka_bootstrap, topics.input, interleave(*(s[:10] for s in series)))
        await read_topic(kafka_bootstrap, topics.output, 30)
        await produce(kafka_bootstrap, topics.input, interleave(*(s[10:] for s in series)))
        # b joins while a is busy: a finishes and commits its batch in flight before giving partitions up
        async with running_daemon(settings, _slow(make_forecaster(64))) as b:
            assert a.bus_in is not None and b.bus_in is not None
            owned_a, owned_b = a.bus_in.assignment, b.bus_in.assignment
            await wait_until(lambda: len(owned_a()) + len(owned_b()) == 3, 30, "a split")
            out = forecasts(await read_topic(kafka_bootstrap, topics.output, 240))
            await wait_committed(kafka_bootstrap, group_id, topics.input)
            assert owned_a() and owned_b()

    by_id: dict[str, dict[str, Any]] = {}
    for f in out:
        if f["id"] in by_id:  # a bar replayed after the rebalance: the very same forecast
            assert (by_id[f["id"]]["mean"], by_id[f["id"]]["quantiles"]) == (f["mean"], f["quantiles"])
        by_id[f["id"]] = f
    assert len(by_id) == 240
    for s in symbols:
        assert sorted(f["context_bars"] for f in by_id.values() if f["symbol"] == s) == list(range(1, 41))
    assert sum((await end_offsets(kafka_bootstrap, topics.input)).values()) == 240


class _RedisDiesAfter(RedisStateStore):
    """Redis fails on the n-th write: the crash window between the Kafka ack and the Redis write."""

    def __init__(self, redis_url: str, prefix: str, max_context: int, fail_on: int) -> None:
        store = RedisStateStore.from_url(redis_url, prefix, max_context)
        super().__init__(store._client, prefix, max_context)  # noqa: SLF001
        self.fail_on = fail_on
        self.calls = 0

    async def apply(self, updates: Sequence[StateUpdate], forecast_ttl_s: int | None = None) -> list[str]:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("injected crash between the Kafka ack and the Redis write")
        return await super().apply(updates, forecast_ttl_s)


async def test_crash_between_kafka_ack_and_redis_write_republishes_the_same_forecast(
    kafka_bootstrap: str,
    redis_url: str,
    key_prefix: str,
    group_id: str,
    topics: Topics,
    make_forecaster: MakeForecaster,
) -> None:
    series = [bar_series(s, 12, seed=4) for s in ("X", "Y")]
    await produce(kafka_bootstrap, topics.input, interleave(*series))
    settings = daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, batch={"max_batch_size": 4}
    )
    prefix = settings.redis.key_prefix

    crashing = Daemon(
        settings, forecaster=make_forecaster(64), store=_RedisDiesAfter(redis_url, prefix, 64, fail_on=4)
    )
    await crashing.start()
    with pytest.raises(RuntimeError, match="injected"):
        await crashing.serve()  # a fatal error: the loop stops without committing the fetch
    await crashing.close()
    published = sum((await end_offsets(kafka_bootstrap, topics.output)).values())
    committed = await committed_offsets(kafka_bootstrap, group_id, topics.input)
    assert sum(committed.values()) < published  # round 4 reached Kafka, not Redis, not the commit

    async with running_daemon(settings, make_forecaster(64)):
        await wait_committed(kafka_bootstrap, group_id, topics.input)
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 25))

    by_id: dict[str, list[dict[str, object]]] = {}
    for f in out:
        by_id.setdefault(str(f["id"]), []).append(f)
    assert len(by_id) == 24
    twice = [fs for fs in by_id.values() if len(fs) > 1]
    assert (
        twice
    )  # the round whose Redis write failed (earlier rounds of that fetch are skipped as duplicates)
    for a, b in twice:
        assert (a["mean"], a["quantiles"], a["seed"], a["context_bars"]) == (
            b["mean"], b["quantiles"], b["seed"], b["context_bars"]
        )  # fmt: skip
