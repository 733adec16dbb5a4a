"""The message bus interface the loop talks to: Kafka (:mod:`daemon.kafka_io`) or in-memory
(:mod:`daemon.bus_memory`), plus the dead-letter sender both share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

Headers = list[tuple[str, bytes]]


class Partition(NamedTuple):
    topic: str
    partition: int


class InMessage:
    """One consumed record, bytes as they arrived."""

    __slots__ = ("topic", "partition", "offset", "key", "value", "timestamp_ms", "headers")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int,
        headers: Headers,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.timestamp_ms = timestamp_ms
        self.headers = headers

    @property
    def tp(self) -> Partition:
        return Partition(self.topic, self.partition)

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


class RebalanceHandler(Protocol):
    """Told before partitions are taken away and after new ones are given."""

    async def on_revoked(self, partitions: set[Partition]) -> None: ...

    async def on_assigned(self, partitions: set[Partition]) -> None: ...


class InputBus(ABC):
    """A consumer-group member: fetch micro-batches, commit what is done."""

    @abstractmethod
    async def start(self, handler: RebalanceHandler) -> None: ...

    @abstractmethod
    async def fetch(self, max_records: int, timeout_ms: int) -> list[InMessage]:
        """Up to ``max_records`` messages, in offset order within each partition; [] after the timeout."""

    @abstractmethod
    async def commit(self, offsets: dict[Partition, int]) -> None:
        """Commit, per partition, the offset of the next message to read."""

    @abstractmethod
    def assignment(self) -> set[Partition]: ...

    @abstractmethod
    def lag(self) -> dict[Partition, int]:
        """Messages behind the end of each assigned partition (where known)."""

    @abstractmethod
    async def stop(self) -> None: ...


class OutputBus(ABC):
    """A producer whose ``send`` returns only once the message is acknowledged."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> None:
        """Publish one message and wait for its acknowledgement; raises BusError on failure."""

    @abstractmethod
    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
        """Publish (key, value) records in this order and wait until all are acknowledged."""

    @abstractmethod
    async def stop(self) -> None: ...


MAX_REASON_BYTES = 2000


class DeadLetters:
    """Sends an invalid message to the dead-letter topic: the original key and value, untouched, the
    original headers, and headers ``reason``, ``reason_kind``, ``source_topic``, ``source_partition``, ``source_offset``,
    ``source_timestamp_ms``."""

    def __init__(self, producer: OutputBus, topic: str, on_sent: Callable[[str], None] | None = None) -> None:
        self._producer = producer
        self.topic = topic
        self._on_sent = on_sent

    async def send(self, msg: InMessage, reason: str, kind: str) -> None:
        headers = list(msg.headers) + [
            ("reason", reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]),
            ("reason_kind", kind.encode()),
            ("source_topic", msg.topic.encode()),
            ("source_partition", str(msg.partition).encode()),
            ("source_offset", str(msg.offset).encode()),
            ("source_timestamp_ms", str(msg.timestamp_ms).encode()),
        ]
        await self._producer.send(self.topic, msg.key, msg.value, headers)
        if self._on_sent is not None:
            self._on_sent(kind)
