"""An in-process bus behind the same interface as Kafka: the zero-setup default for the demo and for
unit tests of pure logic. Topics are lists of partitions; keys pick partitions by CRC32 like a stable
partitioner; each group has one member that owns every partition (no rebalancing)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Callable, Sequence

from daemon.errors import BusError
from daemon.io.bus import Headers, InMessage, InputBus, OutputBus, Partition, RebalanceHandler


class MemoryBroker:
    def __init__(self, default_partitions: int = 4) -> None:
        self.default_partitions = default_partitions
        self._topics: dict[str, list[list[InMessage]]] = {}
        self._committed: dict[tuple[str, Partition], int] = {}
        self._changed = asyncio.Condition()

    def create_topic(self, name: str, partitions: int | None = None) -> None:
        self._topics.setdefault(name, [[] for _ in range(partitions or self.default_partitions)])

    def partitions(self, topic: str) -> list[list[InMessage]]:
        self.create_topic(topic)
        return self._topics[topic]

    def append(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> InMessage:
        parts = self.partitions(topic)
        index = zlib.crc32(key) % len(parts) if key is not None else sum(map(len, parts)) % len(parts)
        msg = InMessage(
            topic, index, len(parts[index]), key, value, int(time.time() * 1e3), list(headers or ())
        )
        parts[index].append(msg)
        return msg

    def messages(self, topic: str) -> list[InMessage]:
        """Every message of ``topic``, partition by partition."""
        return [m for part in self.partitions(topic) for m in part]

    def committed(self, group: str, partition: Partition) -> int:
        return self._committed.get((group, partition), 0)

    def commit(self, group: str, offsets: dict[Partition, int]) -> None:
        self._committed.update({(group, p): off for p, off in offsets.items()})

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, timeout_s: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)


class MemoryInput(InputBus):
    def __init__(self, broker: MemoryBroker, topic: str, group: str) -> None:
        self._broker = broker
        self._topic = topic
        self._group = group
        self._handler: RebalanceHandler | None = None
        self._positions: dict[Partition, int] = {}

    async def start(self, handler: RebalanceHandler) -> None:
        self._handler = handler
        parts = {Partition(self._topic, i) for i in range(len(self._broker.partitions(self._topic)))}
        self._positions = {p: self._broker.committed(self._group, p) for p in parts}
        await handler.on_assigned(parts)

    def _take(self, max_records: int) -> list[InMessage]:
        out: list[InMessage] = []
        for p in sorted(self._positions):
            part = self._broker.partitions(p.topic)[p.partition]
            pos = self._positions[p]
            chunk = part[pos : pos + max_records - len(out)]
            out += chunk
            self._positions[p] = pos + len(chunk)
            if len(out) >= max_records:
                break
        return out

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InMessage]:
        if self._handler is None:
            raise BusError("the in-memory consumer is not started; call start() first")
        out = self._take(max_records)
        if not out and timeout_ms > 0:
            await self._broker.wait(timeout_ms / 1e3)
            out = self._take(max_records)
        return out

    async def commit(self, offsets: dict[Partition, int]) -> None:
        self._broker.commit(self._group, offsets)

    def assignment(self) -> set[Partition]:
        return set(self._positions)

    async def read_history(
        self,
        partition: Partition,
        end_offset: int,
        since_ms: int | None,
        sink: Callable[[list[InMessage]], None],
    ) -> int:
        part = self._broker.partitions(partition.topic)[partition.partition][:end_offset]
        start = 0 if since_ms is None else next((m.offset for m in part if m.timestamp_ms >= since_ms), end_offset)
        sink(part[start:])
        return start

    def lag(self) -> dict[Partition, int]:
        parts = self._broker.partitions(self._topic)
        return {p: len(parts[p.partition]) - pos for p, pos in self._positions.items()}

    async def stop(self) -> None:
        if self._handler is not None:
            await self._handler.on_revoked(set(self._positions))
            self._handler = None
        self._positions = {}


class MemoryOutput(OutputBus):
    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker

    async def start(self) -> None:
        return None

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> None:
        self._broker.append(topic, key, value, headers)
        await self._broker.notify()

    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
        for key, value in records:
            self._broker.append(topic, key, value)
        await self._broker.notify()

    async def stop(self) -> None:
        return None
