"""The session's Redis server, through redis.asyncio."""

from __future__ import annotations

import pytest
import redis.asyncio as redis

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]


async def test_round_trip(redis_url: str, key_prefix: str) -> None:
    client = redis.from_url(redis_url)
    try:
        await client.set(f"{key_prefix}latest", b"forecast-1")
        await client.hset(f"{key_prefix}stats", mapping={"mean": "10.5", "std": "0.25"})
        await client.rpush(f"{key_prefix}ring", b"bar-1", b"bar-2", b"bar-3")
        await client.ltrim(f"{key_prefix}ring", -2, -1)

        assert await client.get(f"{key_prefix}latest") == b"forecast-1"
        assert await client.hgetall(f"{key_prefix}stats") == {b"mean": b"10.5", b"std": b"0.25"}
        assert await client.lrange(f"{key_prefix}ring", 0, -1) == [b"bar-2", b"bar-3"]
    finally:
        await client.aclose()
