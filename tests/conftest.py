"""Fixtures shared by the whole suite: the real Kafka broker and Redis server of this test session
(started by `scripts/services up`, found through KAFKA_BOOTSTRAP and REDIS_URL), and names that
belong to one test only (topics, consumer groups, Redis keys), cleaned up after it.

A missing service skips the tests that need it, or fails them when CI is set.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import pytest
import redis.asyncio as redis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytest_plugins = ["tests.support.fixtures"]  # the daemon's fixtures: models, topics, private services

TopicFactory = Callable[..., Awaitable[str]]

_HOW_TO_START = 'run `make test`, or `make services-up` then `eval "$(scripts/services env)"`'


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _missing(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def _service_address(var: str, default_port: int) -> str:
    value = os.environ.get(var)
    if not value:
        _missing(f"{var} is not set: {_HOW_TO_START}")
    assert value is not None
    first = value.split(",")[0]
    parts = urlsplit(first if "://" in first else f"//{first}")
    try:
        socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=3
        ).close()
    except OSError as exc:
        _missing(f"nothing answers at {var}={value} ({exc}): {_HOW_TO_START}")
    return value


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """host:port of the session's Kafka broker."""
    return _service_address("KAFKA_BOOTSTRAP", 9092)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """redis:// URL of the session's Redis server."""
    return _service_address("REDIS_URL", 6379)


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    """redis:// URL of one node of the session's 3-master Redis Cluster (`scripts/services up redis-cluster`)."""
    return _service_address("REDIS_CLUSTER_URL", 6379)


@pytest.fixture
def unique_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def group_id(unique_id: str) -> str:
    return f"test-group-{unique_id}"


@pytest.fixture
async def topic_factory(kafka_bootstrap: str, unique_id: str) -> AsyncIterator[TopicFactory]:
    """`await topic_factory(partitions=1)` creates a topic only this test knows; all are deleted after it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    created: list[str] = []

    async def create(partitions: int = 1) -> str:
        name = f"test-{unique_id}-{len(created)}"
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        created.append(name)
        return name

    try:
        yield create
    finally:
        try:
            if created:
                await admin.delete_topics(created)
                await _until_gone(admin, set(created))
        finally:
            await admin.close()


async def _until_gone(admin: AIOKafkaAdminClient, topics: set[str], timeout_s: float = 15) -> None:
    # Deletion is acknowledged by the controller before every broker's metadata shows it.
    async with asyncio.timeout(timeout_s):
        while topics & set(await admin.list_topics()):
            await asyncio.sleep(0.05)


@pytest.fixture
async def key_prefix(redis_url: str, unique_id: str) -> AsyncIterator[str]:
    """A Redis key prefix only this test uses; every key under it is deleted after the test."""
    prefix = f"test:{unique_id}:"
    yield prefix
    client = redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
