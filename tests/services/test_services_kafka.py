"""The session's Kafka broker, through aiokafka: what the daemon relies on works for real."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

TopicFactory = Callable[..., Awaitable[str]]  # see tests/conftest.py

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]


def _consumer(bootstrap: str, topic: str, group_id: str | None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


async def test_round_trip_keeps_key_value_and_headers(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory(partitions=3)
    headers = [("schema", b"bar/v1"), ("trace", b"\x00\x01")]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b'{"close": 10.5}', key=b"600519.SH", headers=headers)
    finally:
        await producer.stop()

    consumer = _consumer(kafka_bootstrap, topic, group_id=None)
    await consumer.start()
    try:
        got = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()

    assert (got.key, got.value) == (b"600519.SH", b'{"close": 10.5}')
    assert list(got.headers) == headers
    assert (got.topic, got.partition, got.offset) == (topic, sent.partition, sent.offset)


async def test_group_resumes_from_committed_offset(
    kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = await topic_factory(partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"bar-{i}".encode(), key=b"sym")
    finally:
        await producer.stop()

    first = _consumer(kafka_bootstrap, topic, group_id)
    await first.start()
    try:
        seen = [await asyncio.wait_for(first.getone(), timeout=30) for _ in range(4)]
        await first.commit()  # commits the position: after the 4 records read
    finally:
        await first.stop()
    assert [m.value for m in seen] == [f"bar-{i}".encode() for i in range(4)]

    second = _consumer(kafka_bootstrap, topic, group_id)
    await second.start()
    try:
        assert await second.committed(TopicPartition(topic, 0)) == 4
        rest = [await asyncio.wait_for(second.getone(), timeout=30) for _ in range(6)]
    finally:
        await second.stop()
    assert [m.offset for m in rest] == list(range(4, 10))
    assert [m.value for m in rest] == [f"bar-{i}".encode() for i in range(4, 10)]
