"""The output-topic reader: each forecast's first arrival, by (symbol, bar)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

Key = tuple[str, str]  # (symbol, bar ts as the forecast's "as_of")


@dataclass
class Arrival:
    at: float  # wall clock when this process read the forecast
    latency_ms: dict[str, float]


class Collector:
    """Reads the output topic from the beginning and keeps each forecast's first arrival."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.first: dict[Key, Arrival] = {}
        self.duplicates = 0
        self.times: list[float] = []  # arrival time of every first arrival, in order

    async def start(self, partitions: int) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
            # a 1,000-forecast burst is ~6.6 MB: read it in one fetch, not 1 MB per partition at a time
            max_partition_fetch_bytes=16 << 20,
            fetch_max_bytes=64 << 20,
        )
        await self._consumer.start()
        parts = [TopicPartition(self._topic, p) for p in range(partitions)]
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._run(), name="bench-collector")

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=50, max_records=1000)
            now = time.time()
            for records in batch.values():
                for r in records:
                    msg = orjson.loads(r.value)  # ~10x faster than json on a 6.6 KB forecast
                    key = (msg["symbol"], msg["as_of"])
                    if key in self.first:
                        self.duplicates += 1
                        continue
                    self.first[key] = Arrival(now, msg.get("latency_ms") or {})
                    self.times.append(now)

    def count_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in self.times if t0 <= t < t1)

    async def wait_for(self, keys: list[Key], timeout_s: float) -> bool:
        """True once every key has arrived; False after ``timeout_s`` (or if the reader died)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                self._task.result()  # re-raise the reader's failure
                return False
            if all(k in self.first for k in keys):
                return True
            await asyncio.sleep(0.05)
        return all(k in self.first for k in keys)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
