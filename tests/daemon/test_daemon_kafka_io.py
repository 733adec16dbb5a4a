"""The Kafka side of the bus against the session's real broker: order, commits, lag, dead letters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from daemon_helpers import committed_offsets, read_topic, wait_until

from daemon.bus import DeadLetters, InMessage, Partition
from daemon.errors import BusError
from daemon.kafka_io import KafkaInput, KafkaOutput
from daemon.settings import KafkaSettings

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
