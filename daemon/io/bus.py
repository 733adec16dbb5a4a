"""The message bus interface the loop talks to: Kafka (:mod:`daemon.io.kafka_consumer`,
:mod:`daemon.io.kafka_producer`) or in-memory (:mod:`daemon.io.memory`), plus the dead-letter sender
both share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import structlog

from daemon.errors import BusError, BusUnavailable

log = structlog.get_logger("kronos.bus")

Headers = list[tuple[str, bytes]]


class Partition(NamedTuple):
    topic: str
    partition: int


class InMessage:
    """One consumed record, bytes as they arrived. ``error``: why it could not be decoded (it stands in
    for an undecodable record or record batch, see :mod:`daemon.io.undecodable`): it is dead-lettered."""

    __slots__ = ("topic", "partition", "offset", "key", "value", "timestamp_ms", "headers", "error")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int,
        headers: Headers,
        error: str | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.timestamp_ms = timestamp_ms
        self.headers = headers
        self.error = error

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

    # told each time a record batch that cannot be decoded is skipped (the batch is handed out as a
    # message whose ``error`` says why, and dead-lettered by the loop)
    on_undecodable: Callable[[Partition], None] | None = None

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

    def progress(self) -> dict[Partition, tuple[int, int]]:
        """Per assigned partition (where known): the position (next offset to read) and the lag behind
        the partition's end; readiness tells a partition that does not advance while it lags."""
        return {}

    async def probe(self, timeout_s: float = 3.0) -> None:
        """Raise :class:`BusUnavailable` when the broker cannot be reached (readiness)."""
        return None

    async def read_history(
        self,
        partition: Partition,
        end_offset: int,
        since_ms: int | None,
        sink: Callable[[list[InMessage]], None],
    ) -> int:
        """Hand ``sink`` the retained messages of ``partition`` before ``end_offset``, in order, from
        the first one stamped at or after ``since_ms`` (None: the earliest retained). Returns the
        offset reading started at (0: nothing was ever trimmed). Outside the consumer group: the
        group's positions and commits are untouched."""
        raise BusError(f"{type(self).__name__} cannot read a partition's history")

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
TRUNCATED_BYTES = 1024  # key and value bytes kept in a truncated dead letter


class DeadLetters:
    """Sends an invalid message to the dead-letter topic: the original key and value, untouched, the
    original headers, and headers ``reason``, ``reason_kind``, ``source_topic``, ``source_partition``,
    ``source_offset``, ``source_timestamp_ms``.

    When that send is refused (a message near the broker's size limit grows past it with the headers,
    a broker refusal), a truncated copy goes instead: the first ``TRUNCATED_BYTES`` of key and value,
    none of the original headers, the headers above plus ``truncated=true``, ``original_value_bytes``
    and ``send_error``. If even that is refused, the failure is logged and counted and the consumer goes
    on (the reason and the source reference are in the log). An unreachable broker
    (:class:`BusUnavailable`) is not a refusal: it propagates, and the loop waits the outage out.
    ``on_trouble`` is told ``"truncated"`` or ``"failed"``.
    """

    def __init__(
        self,
        producer: OutputBus,
        topic: str,
        on_sent: Callable[[str], None] | None = None,
        on_trouble: Callable[[str], None] | None = None,
    ) -> None:
        self._producer = producer
        self.topic = topic
        self._on_sent = on_sent
        self._on_trouble = on_trouble

    async def send(self, msg: InMessage, reason: str, kind: str) -> None:
        ref = [
            ("reason", reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]),
            ("reason_kind", kind.encode()),
            ("source_topic", msg.topic.encode()),
            ("source_partition", str(msg.partition).encode()),
            ("source_offset", str(msg.offset).encode()),
            ("source_timestamp_ms", str(msg.timestamp_ms).encode()),
        ]
        try:
            await self._producer.send(self.topic, msg.key, msg.value, list(msg.headers) + ref)
        except BusUnavailable:
            raise
        except BusError as exc:
            await self._send_truncated(msg, reason, kind, ref, exc)
            return
        if self._on_sent is not None:
            self._on_sent(kind)

    async def _send_truncated(
        self, msg: InMessage, reason: str, kind: str, ref: Headers, error: BusError
    ) -> None:
        headers = ref + [
            ("truncated", b"true"),
            ("original_value_bytes", str(len(msg.value or b"")).encode()),
            ("send_error", str(error).encode("utf-8", "replace")[:MAX_REASON_BYTES]),
        ]
        key = None if msg.key is None else msg.key[:TRUNCATED_BYTES]
        value = None if msg.value is None else msg.value[:TRUNCATED_BYTES]
        try:
            await self._producer.send(self.topic, key, value, headers)
        except BusUnavailable:
            raise
        except BusError as again:
            log.error(
                "dead letter refused, even truncated; the message is only in this log",
                source=msg.source, reason=reason, kind=kind, error=str(error), truncated_error=str(again),
            )  # fmt: skip
            if self._on_trouble is not None:
                self._on_trouble("failed")
            return
        log.warning("dead letter sent truncated", source=msg.source, kind=kind, error=str(error))
        if self._on_trouble is not None:
            self._on_trouble("truncated")
        if self._on_sent is not None:
            self._on_sent(kind)
