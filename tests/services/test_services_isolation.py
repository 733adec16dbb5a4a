"""Each test gets topics, groups and Redis keys of its own, and leaves none behind.

The second test checks what the first one left; they run in file order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as redis
from aiokafka.admin import AIOKafkaAdminClient

TopicFactory = Callable[..., Awaitable[str]]  # see tests/conftest.py

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(60)]

_left_by_first: dict[str, str] = {}


async def test_names_are_unique_and_own(
    topic_factory: TopicFactory, group_id: str, key_prefix: str, unique_id: str, redis_url: str
) -> None:
    one, two = await topic_factory(), await topic_factory(partitions=2)
    assert one != two
    assert all(unique_id in name for name in (one, two, group_id, key_prefix))

    client = redis.from_url(redis_url)
    try:
        await client.set(f"{key_prefix}mine", b"1")
    finally:
        await client.aclose()
    _left_by_first.update(topic=one, key=f"{key_prefix}mine", unique_id=unique_id)


async def test_nothing_left_by_another_test(
    kafka_bootstrap: str, redis_url: str, unique_id: str, key_prefix: str
) -> None:
    if not _left_by_first:
        pytest.skip("runs after test_names_are_unique_and_own (run the whole file)")
    assert unique_id != _left_by_first["unique_id"]
    assert not key_prefix.startswith(f"test:{_left_by_first['unique_id']}")

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert _left_by_first["topic"] not in await admin.list_topics()
    finally:
        await admin.close()

    client = redis.from_url(redis_url)
    try:
        assert await client.exists(_left_by_first["key"]) == 0
    finally:
        await client.aclose()
