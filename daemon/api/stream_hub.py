"""One reader of the forecast stream per daemon, fanned out to every ``/v1/stream`` client.

The Redis Stream (daemon/state/redis_stream.py) holds the forecasts of every replica, so a client sees
all symbols whichever replica it reaches. The hub reads it with a blocking ``XREAD`` while at least one
client listens, and offers each entry to every subscriber whose symbols match. A subscriber that falls
``QUEUE`` entries behind is cut off with an ``overflow`` mark (its stream tells the client to resume
from its last id) rather than slowing the others or growing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from daemon.errors import StateError

if TYPE_CHECKING:
    from daemon.api.settings import ApiSettings
    from daemon.state.base import StateStore

log = structlog.get_logger("kronos.api")

Entry = tuple[str, str, bytes]  # (stream id, symbol, forecast JSON)
QUEUE = 2_000  # entries a subscriber may lag behind
READ_COUNT = 500  # entries per XREAD
BLOCK_MS = 1_000  # at most; below the Redis socket timeout (service.py)
RETRY_S = 1.0


class Subscriber:
    def __init__(self, symbols: frozenset[str] | None) -> None:
        self.symbols = symbols
        self.queue: asyncio.Queue[Entry] = asyncio.Queue(QUEUE)
        self.overflowed = False
        self.wake = asyncio.Event()

    def offer(self, entry: Entry) -> None:
        if self.overflowed or (self.symbols is not None and entry[1] not in self.symbols):
            return
        try:
            self.queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.overflowed = True
        self.wake.set()


class StreamHub:
    def __init__(self, store: Callable[[], StateStore | None], settings: ApiSettings | None) -> None:
        self._store = store
        self.max_clients = settings.stream_clients if settings is not None else 1
        self.block_ms = BLOCK_MS
        self.subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.closed = asyncio.Event()

    def full(self) -> bool:
        return len(self.subscribers) >= self.max_clients

    async def subscribe(self, symbols: frozenset[str] | None) -> Subscriber:
        """A new subscriber, once the hub knows where the stream ends (entries after that reach it)."""
        sub = Subscriber(symbols)
        self.subscribers.add(sub)
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.create_task(self._run(), name="kronos-api-stream")
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            done, _ = await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                raise StateError("the forecast stream reader stopped")
        except BaseException:  # also cancelled (the caller's timeout): leave no subscriber behind
            ready.cancel()
            self.unsubscribe(sub)
            raise
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def _run(self) -> None:
        after: str | None = None
        while self.subscribers and not self.closed.is_set():
            store = self._store()
            try:
                if store is None:
                    raise StateError("the daemon has no state store yet")
                if after is None:
                    after = await store.stream_tail()
                    self._ready.set()
                entries = await store.read_stream(after, READ_COUNT, self.block_ms)
            except StateError as exc:
                log.warning("reading the forecast stream failed; retrying", error=str(exc))
                await asyncio.sleep(RETRY_S)
                continue
            for entry in entries:
                after = entry[0]
                for sub in list(self.subscribers):
                    sub.offer(entry)
        self._ready.set()

    async def close(self) -> None:
        self.closed.set()
        for sub in list(self.subscribers):
            sub.wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
