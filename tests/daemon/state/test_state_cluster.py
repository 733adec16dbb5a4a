"""The Redis store on a real 3-master Redis Cluster (``scripts/services up redis-cluster``), and the
move of keys from the legacy schema (``{prefix}:bars:{symbol}``) to the hash-tagged one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from daemon.io.messages import Bar, parse_bar
from daemon.state.base import StateUpdate, bars_key, forecast_key, legacy_keys, meta_key, tokens_key
from daemon.state.redis import RedisStateStore
from kronos_core.stream_types import StreamForecaster
from tests.support.launcher import (
    bar_series,
    daemon_settings,
    forecasts,
    interleave,
    produce,
    read_topic,
    running_daemon,
    wait_committed,
)

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

MINUTE = 60 * 10**9


def _bar(symbol: str, i: int) -> Bar:
    p = 10.0 + i / 7
    return Bar(symbol, 1_718_000_000 * 10**9 + i * MINUTE, (p, p + 0.5, p - 0.5, p + 0.1, 100.0, 1.0e3))


def _update(bar: Bar) -> StateUpdate:
    body = json.dumps({"id": f"{bar.symbol}-{bar.ts_ns}"}).encode()
    return StateUpdate(bar, None, body, "v1", f"in/0/{bar.ts_ns}")


@pytest.mark.parametrize("symbol", ["600977.SH", "AAPL", "a{b", "x}y", "{z}", "BTC-USD:PERP"])
def test_all_keys_of_a_symbol_share_one_slot(symbol: str) -> None:
    keys = [f("kronos", symbol) for f in (bars_key, tokens_key, meta_key, forecast_key)]
    assert len({key_slot(k.encode()) for k in keys}) == 1, keys


@pytest.fixture
async def cluster_store(redis_cluster_url: str, key_prefix: str) -> AsyncIterator[RedisStateStore]:
    store = RedisStateStore.from_url(redis_cluster_url, key_prefix, max_context=8, cluster=True)
    yield store
    await store.close()
    client = RedisCluster.from_url(redis_cluster_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{key_prefix}*")]
        for k in keys:
            await client.delete(k)
    finally:
        await client.aclose()


async def test_cluster_store_round_trips_symbols_spread_over_all_masters(
    cluster_store: RedisStateStore, redis_cluster_url: str, key_prefix: str
) -> None:
    symbols = [f"S{i:03d}" for i in range(60)]
    for i in range(10):  # one atomic update per symbol per call, 60 symbols in each call
        assert await cluster_store.apply([_update(_bar(s, i)) for s in symbols]) == []
    refused = await cluster_store.apply([_update(_bar("S000", 9)), _update(_bar("S001", 3)), _update(_bar("NEW", 0))])
    assert refused == ["S000", "S001"]  # idempotent: a retried or stale write appends nothing
    states = await cluster_store.load([*symbols, "NEW", "NONE"])
    for s in symbols:
        assert list(states[s].timestamps) == [_bar(s, i).ts_ns for i in range(2, 10)]  # capped at 8
    assert len(states["NEW"]) == 1 and len(states["NONE"]) == 0
    assert await cluster_store.latest_forecast("S007") == {"id": f"S007-{_bar('S007', 9).ts_ns}"}
    assert await cluster_store.forecast_from("S007", f"in/0/{_bar('S007', 9).ts_ns}") is not None
    assert await cluster_store.forecast_from("S007", "in/0/1") is None

    client = RedisCluster.from_url(redis_cluster_url)
    try:
        await client.initialize()
        nodes = {client.get_node_from_key(bars_key(key_prefix, s)).name for s in symbols}
        assert len(client.get_primaries()) == 3 and len(nodes) == 3  # the symbols live on all masters
    finally:
        await client.aclose()


async def _write_legacy(client: aioredis.Redis | RedisCluster, prefix: str, symbol: str, n: int) -> None:
    bars, tokens, meta, forecast = legacy_keys(prefix, symbol)
    for i in range(n):
        b = _bar(symbol, i)
        await client.rpush(bars, json.dumps([b.ts_ns, *b.values]))
    await client.hset(meta, mapping={"last_ts": str(_bar(symbol, n - 1).ts_ns), "model_version": "v0", "source": "in/0/9"})
    await client.set(forecast, json.dumps({"id": "old"}), ex=300)


async def _check_moved(store: RedisStateStore, client: aioredis.Redis | RedisCluster, prefix: str) -> None:
    assert await store.latest_forecast("OLD") == {"id": "old"}  # readable before the move too
    state = (await store.load(["OLD"]))["OLD"]
    assert list(state.timestamps) == [_bar("OLD", i).ts_ns for i in range(5)]
    assert state.last_ts == _bar("OLD", 4).ts_ns and store.migrated == 1
    for key in legacy_keys(prefix, "OLD"):
        assert await client.exists(key) == 0
    assert await client.hget(meta_key(prefix, "OLD"), "model_version") == b"v0"
    assert 0 < await client.ttl(forecast_key(prefix, "OLD")) <= 300
    assert await store.apply([_update(_bar("OLD", 4))]) == ["OLD"]  # the moved last_ts guards replays
    assert await store.apply([_update(_bar("OLD", 5))]) == []
    assert len((await store.load(["OLD"]))["OLD"]) == 6 and store.migrated == 1


async def test_legacy_keys_move_to_the_new_schema_on_first_load(redis_url: str, key_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RedisStateStore.from_url(redis_url, key_prefix, max_context=8)
    try:
        await _write_legacy(client, key_prefix, "OLD", 5)
        await _check_moved(store, client, key_prefix)
    finally:
        await store.close()
        await client.aclose()


async def test_legacy_keys_move_on_a_cluster_too(
    cluster_store: RedisStateStore, redis_cluster_url: str, key_prefix: str
) -> None:
    client = RedisCluster.from_url(redis_cluster_url)
    try:
        await _write_legacy(client, key_prefix, "OLD", 5)
        await _check_moved(cluster_store, client, key_prefix)
    finally:
        await client.aclose()


@pytest.mark.kafka
async def test_the_daemon_runs_on_the_cluster_and_a_wipe_of_it_is_restored(
    kafka_bootstrap: str,
    redis_cluster_url: str,
    key_prefix: str,
    group_id: str,
    topics: Any,
    forecaster: StreamForecaster,
) -> None:
    """The whole daemon with KRONOS_REDIS__CLUSTER=true: forecasts, rings, and the lost-state restore
    (generation marker, watermarks, per-symbol restore script) all on a 3-master cluster."""
    symbols = [f"C{i}" for i in range(6)]
    series = {s: bar_series(s, 12, seed=i) for i, s in enumerate(symbols)}
    await produce(kafka_bootstrap, topics.input, interleave(*(v[:8] for v in series.values())))
    settings = daemon_settings(
        kafka_bootstrap, redis_cluster_url, key_prefix, group_id, topics, redis={"cluster": True}
    )
    client = RedisCluster.from_url(redis_cluster_url)
    try:
        async with running_daemon(settings, forecaster):
            await wait_committed(kafka_bootstrap, group_id, topics.input, timeout_s=60)
        # Lose everything of this prefix (as a failover to an empty replica would), then go on.
        for key in [k async for k in client.scan_iter(match=f"{key_prefix}*")]:
            await client.delete(key)
        await produce(kafka_bootstrap, topics.input, interleave(*(v[8:] for v in series.values())))
        async with running_daemon(settings, forecaster):
            await wait_committed(kafka_bootstrap, group_id, topics.input, timeout_s=60)
        store = RedisStateStore.from_url(redis_cluster_url, settings.redis.key_prefix, 64, cluster=True)
        states = await store.load(symbols)
        await store.close()
    finally:
        for key in [k async for k in client.scan_iter(match=f"{key_prefix}*")]:
            await client.delete(key)
        await client.aclose()
    out = forecasts(await read_topic(kafka_bootstrap, topics.output, 72))
    assert len({f["id"] for f in out}) == 72
    for s in symbols:
        assert states[s].timestamps == [parse_bar(k, v).ts_ns for k, v in series[s]]  # restored, then 4 more
        last = [f for f in out if f["symbol"] == s][-1]
        assert last["context_bars"] == 12
