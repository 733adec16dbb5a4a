"""The Redis state store against the session's real Redis (and the in-memory one, same semantics)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis

from daemon.io.messages import Bar
from daemon.state.base import (
    StateStore,
    StateUpdate,
    SymbolState,
    bars_key,
    forecast_key,
    meta_key,
    tokens_key,
)
from daemon.state.memory import MemoryStateStore
from daemon.state.redis import RedisStateStore
from kronos_core.stream_types import TokenState

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]

MINUTE = 60 * 10**9


def _bar(symbol: str, i: int, price: float = 10.0) -> Bar:
    return Bar(
        symbol,
        1_718_000_000 * 10**9 + i * MINUTE,
        (price, price + 0.5, price - 0.5, price + 0.1, 100.0, 1.0e3),
    )


def _update(bar: Bar, tokens: TokenState | None = None, version: str = "v1") -> StateUpdate:
    body = json.dumps({"id": f"{bar.symbol}-{bar.ts_ns}", "as_of": bar.ts_ns}).encode()
    return StateUpdate(bar, tokens, body, version, f"in/0/{bar.ts_ns}")


def _tokens(n: int, last_ts: int) -> TokenState:
    ids = np.arange(n, dtype=np.int64)
    return TokenState(
        ids, ids[::-1].copy(), np.full(6, 1.5), np.full(6, 0.25), last_ts - (n - 1) * MINUTE, last_ts, 7
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


@pytest.fixture(params=["redis", "memory"])
async def store(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryStateStore(key_prefix, max_context=8)
        return
    s = RedisStateStore.from_url(redis_url, key_prefix, max_context=8)
    yield s
    await s.close()


async def test_apply_then_load_round_trips_bars_tokens_and_last_ts(store: StateStore) -> None:
    for i in range(3):
        bar = _bar("AAA", i, 10.0 + i / 3)
        assert await store.apply([_update(bar, _tokens(i + 1, bar.ts_ns))]) == []
    state = (await store.load(["AAA", "NEW"]))["AAA"]
    assert list(state.timestamps) == [_bar("AAA", i).ts_ns for i in range(3)]
    assert list(state.rows)[1] == _bar("AAA", 1, 10.0 + 1 / 3).values  # floats exactly as written
    assert state.last_ts == _bar("AAA", 2).ts_ns
    assert state.token_state is not None and state.token_version == "v1"
    assert state.token_state.fingerprint() == _tokens(3, state.last_ts).fingerprint()
    assert await store.latest_forecast("AAA") == {"id": f"AAA-{state.last_ts}", "as_of": state.last_ts}


async def test_unknown_symbol_loads_empty(store: StateStore) -> None:
    state = (await store.load(["NOPE"]))["NOPE"]
    assert len(state) == 0 and state.last_ts is None and state.token_state is None
    assert await store.latest_forecast("NOPE") is None


async def test_ring_is_capped_and_apply_is_idempotent(store: StateStore) -> None:
    for i in range(20):
        await store.apply([_update(_bar("AAA", i)), _update(_bar("BBB", i))])
    refused = await store.apply([_update(_bar("AAA", 19)), _update(_bar("BBB", 3)), _update(_bar("CCC", 0))])
    assert refused == ["AAA", "BBB"]  # a retried write or a stale writer appends nothing
    states = await store.load(["AAA", "BBB", "CCC"])
    assert list(states["AAA"].timestamps) == [_bar("AAA", i).ts_ns for i in range(12, 20)]
    assert len(states["BBB"]) == 8 and len(states["CCC"]) == 1


async def test_exact_mode_clears_the_token_cache(store: StateStore) -> None:
    bar = _bar("AAA", 0)
    await store.apply([_update(bar, _tokens(1, bar.ts_ns))])
    await store.apply([_update(_bar("AAA", 1), None)])
    assert (await store.load(["AAA"]))["AAA"].token_state is None


async def test_key_schema_and_forecast_ttl(redis_url: str, key_prefix: str, client: aioredis.Redis) -> None:
    store = RedisStateStore.from_url(redis_url, key_prefix, max_context=8)
    try:
        bar = _bar("600977.SH", 0)
        await store.apply([_update(bar, _tokens(1, bar.ts_ns))], forecast_ttl_s=30)
    finally:
        await store.close()
    s = "600977.SH"
    assert await client.type(bars_key(key_prefix, s)) == b"list"
    assert await client.type(tokens_key(key_prefix, s)) == b"string"
    assert await client.type(meta_key(key_prefix, s)) == b"hash"
    assert 0 < await client.ttl(forecast_key(key_prefix, s)) <= 30
    meta = await client.hgetall(meta_key(key_prefix, s))
    assert meta[b"last_ts"] == str(bar.ts_ns).encode() and meta[b"model_version"] == b"v1"
    first = await client.lindex(bars_key(key_prefix, s), 0)
    assert first is not None and json.loads(first) == [bar.ts_ns, *bar.values]


async def test_ring_stays_capped_at_512_for_600_bars(
    redis_url: str, key_prefix: str, client: aioredis.Redis
) -> None:
    store = RedisStateStore.from_url(redis_url, key_prefix, max_context=512)
    try:
        for i in range(600):
            bar = _bar("CAP", i, 10 + (i % 17) / 7)
            await store.apply([_update(bar, _tokens(min(i + 1, 512), bar.ts_ns))])
    finally:
        await store.close()
    assert await client.llen(bars_key(key_prefix, "CAP")) == 512
    ring_bytes = await client.memory_usage(bars_key(key_prefix, "CAP"))
    token_bytes = await client.memory_usage(tokens_key(key_prefix, "CAP"))
    assert ring_bytes is not None and ring_bytes < 512 * 160  # ~100 B of JSON per bar, plus overhead
    assert token_bytes is not None and token_bytes < 8 * 1024  # 2 x 512 int32 ids, base64


async def test_concurrent_applies_for_one_symbol_never_duplicate(redis_url: str, key_prefix: str) -> None:
    stores = [RedisStateStore.from_url(redis_url, key_prefix, max_context=64) for _ in range(3)]
    try:
        await asyncio.gather(*(s.apply([_update(_bar("RACE", i))]) for i in range(10) for s in stores))
        state = (await stores[0].load(["RACE"]))["RACE"]
    finally:
        for s in stores:
            await s.close()
    ts = list(state.timestamps)
    assert ts == sorted(set(ts))  # strictly increasing: no bar appended twice


async def test_generation_watermarks_and_a_guarded_restore(store: StateStore) -> None:
    first = await store.generation()
    assert first and await store.generation() == first  # created once, then stable
    await store.set_watermarks({"in/0": 41, "in/1": 7})
    await store.set_watermarks({"in/0": 42})
    assert await store.watermarks() == {"in/0": 42, "in/1": 7}

    restored = SymbolState("R", store.max_context)
    for i in range(3):
        restored.append(_bar("R", i), None, "", f"in/0/{i}")
    restored.complete = False
    assert await store.restore([(restored, 12345)]) == []  # the stored last_ts is not the expected one
    assert await store.restore([(restored, None)]) == ["R"]
    state = (await store.load(["R"]))["R"]
    assert list(state.timestamps) == [_bar("R", i).ts_ns for i in range(3)]
    assert state.last_ts == _bar("R", 2).ts_ns and state.source == ("in", 0, 2) and not state.complete
    assert await store.apply([_update(_bar("R", 3))]) == []  # the ring goes on from the restored bars
    assert len((await store.load(["R"]))["R"]) == 4
