"""The Kafka producer (aiokafka): idempotent, acks from every in-sync replica. The exactly-once mode's
transactional producer (:mod:`daemon.io.kafka_eos`) builds on it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from daemon.errors import BusError
from daemon.io.bus import Headers, OutputBus
from daemon.io.kafka import bus_error, connection_config, start_client
from daemon.settings import KafkaSettings


class KafkaOutput(OutputBus):
    """Idempotent producer (acks=all): a retried send never duplicates a message within a session."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        await self._start_producer("producer")

    async def _start_producer(self, what: str, **extra: Any) -> None:
        """Start the idempotent producer; ``extra``: more aiokafka options (a transactional id)."""
        s = self._settings
        self._producer = AIOKafkaProducer(
            **connection_config(s),
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            max_batch_size=s.producer_batch_bytes,
            compression_type=None if s.compression_type == "none" else s.compression_type,
            **extra,
        )
        await start_client(self._producer, what, s)

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> None:
        if self._producer is None:
            raise BusError("the Kafka producer is not started; call start() first")
        try:
            await self._producer.send_and_wait(topic, value=value, key=key, headers=headers or None)
        except KafkaError as exc:
            raise bus_error(f"publishing to {topic!r} failed: {exc!r}", exc) from exc

    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
        if self._producer is None:
            raise BusError("the Kafka producer is not started; call start() first")
        try:
            # Enqueue one by one (keeps the order within each partition), then wait for all acks.
            acks = [await self._producer.send(topic, value=value, key=key) for key, value in records]
            await asyncio.gather(*acks)
        except KafkaError as exc:
            raise bus_error(f"publishing {len(records)} messages to {topic!r} failed: {exc!r}", exc) from exc

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await producer.stop()  # flushes what is pending
            except KafkaError as exc:
                raise BusError(f"closing the Kafka producer failed: {exc}") from exc
