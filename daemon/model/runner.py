"""The model thread, shared by the stream and on-demand forecasts, with the stream first.

Every model call runs on one thread (on CUDA one thread does all the work; on a CPU the model uses
every core it is given). The daemon (daemon/app.py) builds one and hands it to the loop, the model
follower, the challengers and on-demand forecasts. The stream's calls (the loop's rounds, model swaps:
``run_in_executor`` or :meth:`ModelExecutor.call`) count as *waiting* from submission until done. Background
work (on-demand forecasts: :mod:`daemon.pipeline.ondemand`) goes through :meth:`run_when_idle`, which
submits only while no stream call is waiting, and once the stream has been quiet for a moment (a
burst's rounds follow each other closely), one call at a time: a stream round that arrives meanwhile
waits for at most the one background call already running, whose size the caller caps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ModelExecutor(ThreadPoolExecutor):
    """A single-thread executor whose ordinary submissions (the stream's) come before
    :meth:`run_when_idle` work."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="kronos-model")
        self._lock = threading.Lock()
        self._waiting = 0  # stream calls submitted and not done
        self._idle: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._background = asyncio.Lock()  # one background call at a time
        self._last_done = 0.0  # time.monotonic() when the last stream call ended

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._lock:
            self._waiting += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model thread as the stream's calls run (model swaps, seeding, smoke
        forecasts: on CUDA one thread does all the work)."""
        return await asyncio.get_running_loop().run_in_executor(self, fn)

    @property
    def stream_waiting(self) -> int:
        """Stream calls submitted and not done yet."""
        return self._waiting

    def _done(self, _: object) -> None:
        with self._lock:
            self._waiting -= 1
            self._last_done = time.monotonic()
            wake, self._idle = (self._idle, []) if self._waiting == 0 else ([], self._idle)
        for loop, waiter in wake:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, waiter)

    async def _until_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._waiting == 0:
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                self._idle.append((loop, waiter))
            await waiter

    async def run_when_idle(self, fn: Callable[..., T], *args: Any, quiet_s: float = 0.0, max_defer_s: float = 0.0) -> T:
        """Run ``fn(*args)`` on the model thread once no stream call is waiting (one such call at a
        time; the stream's calls that come meanwhile wait for this one only).

        ``quiet_s``: also wait until the stream has made no call for that long (its bars come in
        bursts: this keeps on-demand calls out of the gaps between a burst's rounds), for at most
        ``max_defer_s``; after that, as soon as no stream call is waiting."""
        async with self._background:
            give_up = time.monotonic() + max_defer_s
            while True:
                await self._until_idle()
                now = time.monotonic()
                wait = min(self._last_done + quiet_s, give_up) - now
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
                if self._waiting == 0 and time.monotonic() - self._last_done >= quiet_s:
                    break
            future = super().submit(fn, *args)  # not counted: the stream does not wait for itself
            return await asyncio.wrap_future(future)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


__all__ = ["ModelExecutor"]
