"""The Kafka side of the bus against the session's real broker: order, commits, lag, dead letters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from daemon.errors import BusError
from daemon.io.bus import DeadLetters, InMessage, Partition
from daemon.io.kafka_consumer import KafkaInput
from daemon.io.kafka_producer import KafkaOutput
from daemon.settings import KafkaSettings
from tests.support.launcher import committed_offsets, read_topic, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]

TopicFactory = Callable[..., Awaitable[str]]


class _Handler:
    def __init__(self) -> None:
        self.assigned: list[set[Partition]] = []
        self.revoked: list[set[Partition]] = []

    async def on_revoked(self, partitions: set[Partition]) -> None:
        self.revoked.append(partitions)

    async def on_assigned(self, partitions: set[Partition]) -> None:
        self.assigned.append(partitions)


async def test_send_batch_keeps_order_and_consumer_commits_and_reports_lag(
    kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = await topic_factory(partitions=1)
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, input_topic=topic, group_id=group_id)
    out = KafkaOutput(settings)
    await out.start()
    try:
        await out.send_batch(topic, [(b"k", str(i).encode()) for i in range(100)])
    finally:
        await out.stop()

    handler = _Handler()
    consumer = KafkaInput(settings)
    await consumer.start(handler)
    try:
        got: list[InMessage] = []

        async def fetched_some() -> bool:
            got.extend(await consumer.fetch(max_records=30, timeout_ms=200))
            return len(got) >= 30

        await wait_until(fetched_some, 30, "30 messages")
        assert [m.value for m in got[:30]] == [str(i).encode() for i in range(30)]
        assert handler.assigned == [{Partition(topic, 0)}]
        await consumer.commit({Partition(topic, 0): got[29].offset + 1})
        assert consumer.lag()[Partition(topic, 0)] == 100 - len(got)
    finally:
        await consumer.stop()
    assert await committed_offsets(kafka_bootstrap, group_id, topic) == {0: 30}


async def test_dead_letter_keeps_the_original_bytes_and_says_why(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    dlq = await topic_factory(partitions=1)
    out = KafkaOutput(KafkaSettings(bootstrap_servers=kafka_bootstrap))
    await out.start()
    sent: list[str] = []
    try:
        msg = InMessage("bars", 2, 41, b"\xffkey", b"\x00not json", 1234, [("trace", b"abc")])
        await DeadLetters(out, dlq, sent.append).send(msg, "malformed JSON: at char 0", "json")
    finally:
        await out.stop()
    [record] = await read_topic(kafka_bootstrap, dlq, 1)
    assert (record.key, record.value) == (b"\xffkey", b"\x00not json")
    assert dict(record.headers) == {
        "trace": b"abc",
        "reason": b"malformed JSON: at char 0",
        "reason_kind": b"json",
        "source_topic": b"bars",
        "source_partition": b"2",
        "source_offset": b"41",
        "source_timestamp_ms": b"1234",
    }
    assert sent == ["json"]


async def test_unreachable_broker_is_a_clear_error() -> None:
    out = KafkaOutput(KafkaSettings(bootstrap_servers="127.0.0.1:1", request_timeout_ms=2000))
    with pytest.raises(BusError, match="KRONOS_KAFKA__BOOTSTRAP_SERVERS"):
        await out.start()


async def _send_spread(kafka_bootstrap: str, topic: str, partitions: int, per_partition: int) -> None:
    """``per_partition`` messages on every partition of ``topic`` (explicit partitions, value = "p:i")."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        acks = [await producer.send(topic, value=f"{p}:{i}".encode(), partition=p)
                for i in range(per_partition) for p in range(partitions)]
        for ack in acks:
            await ack
    finally:
        await producer.stop()


async def _started_input(kafka_bootstrap: str, topic: str, group_id: str) -> KafkaInput:
    consumer = KafkaInput(KafkaSettings(bootstrap_servers=kafka_bootstrap, input_topic=topic, group_id=group_id))
    await consumer.start(_Handler())
    return consumer


async def test_a_fetch_draws_from_every_partition_fairly(
    kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    """A backlog on 6 partitions and room for a third of it: every partition gives its share, in
    offset order, instead of the first partitions being emptied one after another."""
    topic = await topic_factory(partitions=6)
    await _send_spread(kafka_bootstrap, topic, partitions=6, per_partition=20)
    consumer = await _started_input(kafka_bootstrap, topic, group_id)
    try:
        got: list[InMessage] = []

        async def buffered() -> bool:  # the first fetch waits until the consumer has data
            got.extend(await consumer.fetch(max_records=40, timeout_ms=500))
            return bool(got)

        await wait_until(buffered, 30, "a first fetch")
        if len(got) < 40:  # the broker's first answer may not cover every partition yet
            got.extend(await consumer.fetch(max_records=40 - len(got), timeout_ms=500))
        per_partition = {p: [m.offset for m in got if m.partition == p] for p in range(6)}
        assert len(got) == 40
        assert all(6 <= len(offsets) <= 7 for offsets in per_partition.values()), per_partition
        assert all(offsets == list(range(len(offsets))) for offsets in per_partition.values())
    finally:
        await consumer.stop()


async def test_a_burst_over_partitions_lands_in_one_lingering_fetch(
    kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    """After the first record the fetch lingers up to max_wait_ms: a burst whose bars arrive over a
    few hundred milliseconds on 4 partitions comes back as one batch."""
    import asyncio

    from daemon.pipeline.intake import fetch_lingering

    topic = await topic_factory(partitions=4)
    consumer = await _started_input(kafka_bootstrap, topic, group_id)
    try:
        await wait_until(lambda: _assigned(consumer), 30, "a partition assignment")
        first = asyncio.create_task(fetch_lingering(consumer, max_records=100, wait_ms=20_000, linger_ms=3_000))
        await _send_spread(kafka_bootstrap, topic, partitions=1, per_partition=1)  # the first bar ...
        await asyncio.sleep(0.3)
        await _send_spread(kafka_bootstrap, topic, partitions=4, per_partition=10)  # ... the rest, later
        batch = await first
        assert len(batch) == 41 and {m.partition for m in batch} == {0, 1, 2, 3}
        full = asyncio.create_task(fetch_lingering(consumer, max_records=8, wait_ms=20_000, linger_ms=20_000))
        await _send_spread(kafka_bootstrap, topic, partitions=4, per_partition=2)
        assert len(await asyncio.wait_for(full, 15)) == 8  # a full batch does not wait out the linger
    finally:
        await consumer.stop()


async def test_the_linger_ends_once_the_burst_is_over(
    kafka_bootstrap: str, topic_factory: TopicFactory, group_id: str
) -> None:
    """With linger_idle_ms, a fetch whose burst has landed does not wait out a long linger: it ends
    once no record came for that long (here a 20 s linger ends within the 10 s this test waits)."""
    import asyncio

    from daemon.pipeline.intake import fetch_lingering

    topic = await topic_factory(partitions=4)
    consumer = await _started_input(kafka_bootstrap, topic, group_id)
    try:
        await wait_until(lambda: _assigned(consumer), 30, "a partition assignment")
        fetch = fetch_lingering(consumer, max_records=1000, wait_ms=20_000, linger_ms=20_000, idle_ms=500)
        task = asyncio.create_task(fetch)
        await _send_spread(kafka_bootstrap, topic, partitions=4, per_partition=10)
        batch = await asyncio.wait_for(task, 10)
        assert len(batch) == 40 and {m.partition for m in batch} == {0, 1, 2, 3}
    finally:
        await consumer.stop()


async def _assigned(consumer: KafkaInput) -> bool:
    await consumer.fetch(max_records=1, timeout_ms=100)
    return bool(consumer.assignment())
