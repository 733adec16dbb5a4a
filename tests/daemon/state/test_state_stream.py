"""The forecast stream (daemon/state/redis_stream.py): every forecast written is appended once, in
order, on one Redis server, on a Redis Cluster and in the memory store; a refused write adds nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from daemon.io.messages import Bar
from daemon.state.base import StateStore, StateUpdate
from daemon.state.memory import MemoryStateStore
from daemon.state.redis import RedisStateStore
from daemon.state.redis_stream import entry_order, stream_key

MINUTE = 60 * 10**9


def _update(symbol: str, i: int) -> StateUpdate:
    p = 10.0 + i
    bar = Bar(symbol, 1_718_000_000 * 10**9 + i * MINUTE, (p, p + 0.5, p - 0.5, p + 0.1, 100.0, 1.0e3))
    return StateUpdate(bar, None, json.dumps({"symbol": symbol, "i": i}).encode(), "v1", f"in/0/{i}")


@pytest.fixture(params=["redis", "cluster", "memory"])
async def store(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryStateStore(key_prefix, 8)
        return
    cluster = request.param == "cluster"
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    redis_store = RedisStateStore.from_url(url, key_prefix, max_context=8, cluster=cluster)
    redis_store.stream_length = 1000
    yield redis_store
    await redis_store.close()
    client = RedisCluster.from_url(url) if cluster else aioredis.Redis.from_url(url)
    try:
        for k in [k async for k in client.scan_iter(match=f"{key_prefix}*")]:
            await client.delete(k)
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_every_forecast_written_is_appended_once_in_order(store: StateStore) -> None:
    assert await store.stream_tail() == "0-0"
    symbols = [f"S{i:02d}" for i in range(12)]  # spread over the cluster's masters
    for i in range(3):
        assert await store.apply([_update(s, i) for s in symbols]) == []
    assert await store.apply([_update("S00", 1), _update("NEW", 0)]) == ["S00"]  # refused: no entry
    entries = await store.read_stream("0-0", 1000)
    got = [(symbol, json.loads(forecast)) for _, symbol, forecast in entries]
    wanted = [(s, {"symbol": s, "i": i}) for i in range(3) for s in symbols] + [("NEW", {"symbol": "NEW", "i": 0})]
    assert got == wanted
    ids = [entry_order(e[0]) for e in entries]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert await store.stream_tail() == entries[-1][0]
    assert [e[1] for e in await store.read_stream(entries[-3][0], 10)] == [symbols[-1], "NEW"]

    began = time.monotonic()
    assert await store.read_stream(entries[-1][0], 10, block_ms=300) == []  # waits, then nothing
    assert time.monotonic() - began >= 0.25
    waiting = asyncio.create_task(store.read_stream(entries[-1][0], 10, block_ms=5000))
    await asyncio.sleep(0.1)
    await store.apply([_update("LATE", 0)])
    assert [e[1] for e in await asyncio.wait_for(waiting, 5)] == ["LATE"]  # woken by the write


@pytest.mark.redis
async def test_no_stream_when_its_length_is_zero(redis_url: str, key_prefix: str) -> None:
    store = RedisStateStore.from_url(redis_url, key_prefix, max_context=8)
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert store.stream_length == 0
        await store.apply([_update("A", 0)])
        assert await store.latest_forecast("A") == {"symbol": "A", "i": 0}
        assert not await client.exists(stream_key(key_prefix))
    finally:
        await store.close()
        await client.aclose()
