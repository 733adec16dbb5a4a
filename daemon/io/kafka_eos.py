"""Exactly-once delivery (``KRONOS_KAFKA__EXACTLY_ONCE=true``): Kafka transactions, as Kafka Streams
and Quix Streams do it.

A transactional producer (:class:`TransactionalOutput`) opens a transaction at the first send after a
commit; the forecasts and dead letters of a round go into it, and the "commit" of the input offsets
(:class:`TransactionalInput.commit`) sends those offsets *into the same transaction*
(``send_offsets_to_transaction``) and commits it. A reader with ``isolation.level=read_committed``
therefore sees a round's forecasts if and only if the input offsets past those bars are committed.

The loop commits once per round in this mode (``LoopConfig.commit_every_round``): send the round's
forecasts, write Redis (idempotent), commit the transaction. A crash between the Redis write and
the commit aborts the transaction (the next producer with the same transactional id aborts it at
start-up), the bars are replayed, and Redis already holds them: the loop then re-publishes the
stored forecast of a bar whose stored ``source`` (topic/partition/offset) is that very message,
instead of skipping it as a duplicate. Each round holds at most one bar per symbol, so the stored
latest forecast is exactly the one that was aborted.

Transactional id: one per instance, ``KRONOS_KAFKA__TRANSACTIONAL_ID`` or
``<group_id>.<group_instance_id>`` (static membership). A restarted instance (same pod name in a
StatefulSet) starts its producer with the same id, which fences the old incarnation (a zombie's
commit fails with ``ProducerFenced``) and aborts its open transaction before the consumer reads the
committed offsets. See docs/delivery.md ("Exactly-once") for why per instance and not per input partition.

A failed transaction is aborted and the consumer is rewound to the committed offsets; the loop sees
a :class:`TransactionAborted` (a :class:`~daemon.errors.CommitRefused`), drops its cached state and
processes the bars again. A fenced producer is fatal: this process is a zombie and must stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from daemon.errors import BusError, CommitRefused, DaemonError
from daemon.io.bus import Headers, InMessage, Partition
from daemon.io.kafka_consumer import KafkaInput
from daemon.io.kafka_producer import KafkaOutput
from daemon.settings import KafkaSettings

log = structlog.get_logger("kronos.eos")


class TransactionAborted(CommitRefused):
    """A transaction failed and was aborted; the consumer is rewound to the committed offsets."""


class ProducerFencedError(DaemonError):
    """Another instance took over this transactional id: this process is a zombie and must stop
    (not a BusError, so it is not retried as an outage)."""


def transactional_id(settings: KafkaSettings) -> str:
    """The producer's transactional id: stable per instance (see the module docstring)."""
    if settings.transactional_id:
        return settings.transactional_id
    if settings.group_instance_id:
        return f"{settings.group_id}.{settings.group_instance_id}"
    raise BusError(
        "exactly-once needs a transactional id that is stable per replica: set "
        "KRONOS_KAFKA__GROUP_INSTANCE_ID (e.g. the StatefulSet pod name) or KRONOS_KAFKA__TRANSACTIONAL_ID"
    )


class TransactionalOutput(KafkaOutput):
    """A transactional producer: every send joins the open transaction (opened on demand)."""

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(settings)
        self.transactional_id = transactional_id(settings)
        self._open = False
        self._lock = asyncio.Lock()
        self._input: TransactionalInput | None = None
        self._broken = False  # an abort failed: replace the producer before the next transaction
        self.transactions = 0  # committed
        self.aborts = 0

    async def start(self) -> None:
        # start() runs InitProducerId: it fences an older producer with this id and aborts its open
        # transaction, so the consumer (started after this) reads settled offsets.
        await self._start_producer(
            "transactional producer",
            transactional_id=self.transactional_id,
            transaction_timeout_ms=self._settings.transaction_timeout_ms,
        )
        log.info("transactional producer started", transactional_id=self.transactional_id)

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise BusError("the Kafka producer is not started; call start() first")
        return self._producer

    async def _begin(self) -> None:
        async with self._lock:
            if self._broken:
                await self._replace_producer()
            if not self._open:
                await self._require().begin_transaction()
                self._open = True

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> None:
        try:
            await self._begin()
            await self._require().send_and_wait(topic, value=value, key=key, headers=headers or None)
        except KafkaError as exc:
            await self._fail(exc, f"publishing to {topic!r}")

    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
        if not records:
            return
        producer = self._require()
        try:
            await self._begin()
            acks = [await producer.send(topic, value=value, key=key) for key, value in records]
            await asyncio.gather(*acks)
        except KafkaError as exc:
            await self._fail(exc, f"publishing {len(records)} messages to {topic!r}")

    async def commit_offsets(self, offsets: dict[Partition, int], group_id: str) -> None:
        """Send ``offsets`` (next offset to read, per partition) into the transaction and commit it."""
        producer = self._require()
        try:
            await self._begin()
            await producer.send_offsets_to_transaction(
                {TopicPartition(p.topic, p.partition): off for p, off in offsets.items()}, group_id
            )
            async with self._lock:
                await producer.commit_transaction()
                self._open = False
            self.transactions += 1
        except KafkaError as exc:
            await self._fail(exc, f"committing the transaction with offsets {dict(offsets)}")

    async def _fail(self, exc: KafkaError, what: str) -> None:
        """Abort the open transaction, rewind the consumer, raise (fatal when fenced)."""
        if isinstance(exc, ProducerFenced):
            raise ProducerFencedError(
                f"{what} failed: producer fenced, another instance now uses transactional id "
                f"{self.transactional_id!r}; this process is a zombie and stops"
            ) from exc
        await self.abort_open()
        log.warning("transaction aborted; replaying from the committed offsets", error=f"{what}: {exc}")
        raise TransactionAborted(f"{what} failed: {exc}; the transaction was aborted") from exc

    async def abort_open(self) -> None:
        """Abort the open transaction (if any) and rewind the consumer to the committed offsets. When
        the broker cannot be reached, the producer is replaced before the next transaction (its
        successor's start aborts the open one) and the rewind happens before the next fetch."""
        async with self._lock:
            if self._open:
                self._open = False
                self.aborts += 1
                try:
                    async with asyncio.timeout(self._settings.request_timeout_ms / 1e3):
                        await self._require().abort_transaction()
                except (KafkaError, TimeoutError) as abort_exc:
                    log.warning("aborting the transaction failed; the producer will be replaced", error=str(abort_exc))
                    self._broken = True
        if self._input is not None:
            self._input.rewind_pending = True
            try:
                await self._input.rewind()
            except BusError as rewind_exc:  # done before the next fetch instead
                log.warning("rewinding failed; retried before the next fetch", error=str(rewind_exc))

    async def _replace_producer(self) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            try:
                await old.stop()
            except KafkaError as exc:
                log.warning("closing the broken transactional producer failed", error=str(exc))
        await self.start()  # raises BusError while the broker is away: the caller retries
        self._broken = False

    async def stop(self) -> None:
        if self._producer is not None and self._open:
            try:  # an unfinished round: its offsets were not sent, so it is replayed anyway
                await self._producer.abort_transaction()
            except KafkaError as exc:
                log.warning("aborting the open transaction at stop failed", error=str(exc))
            self._open = False
        await super().stop()


class TransactionalInput(KafkaInput):
    """A consumer whose commits go through the producer's transaction (nothing is committed directly)."""

    def __init__(self, settings: KafkaSettings, output: TransactionalOutput, topic: str | None = None) -> None:
        super().__init__(settings, topic)
        self._output = output
        output._input = self
        self.rewind_pending = False  # an aborted transaction's rewind that could not be done yet

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InMessage]:
        if self.rewind_pending:
            await self.rewind()  # BusError while the broker is away: the loop retries the fetch
        return await super().fetch(max_records, timeout_ms)

    async def commit(self, offsets: dict[Partition, int]) -> None:
        if offsets:
            await self._output.commit_offsets(offsets, self._settings.group_id)

    async def rewind(self) -> None:
        """Reset every assigned partition to its committed offset (what an aborted transaction left)."""
        consumer = self._require()
        parts = list(consumer.assignment())
        if not parts:
            self.rewind_pending = False
            return
        try:
            for tp in parts:
                committed = await consumer.committed(tp)
                if committed is not None and committed >= 0:
                    consumer.seek(tp, committed)
                elif self._settings.auto_offset_reset == "earliest":
                    await consumer.seek_to_beginning(tp)
                else:
                    raise BusError(
                        f"cannot rewind {tp.topic}/{tp.partition}: nothing committed yet and "
                        "KRONOS_KAFKA__AUTO_OFFSET_RESET=latest; restart to replay from the end"
                    )
        except KafkaError as exc:
            raise BusError(f"rewinding to the committed offsets failed: {exc}") from exc
        self.forget({Partition(tp.topic, tp.partition) for tp in parts})
        self.rewind_pending = False
