"""The model thread, shared by the stream and on-demand forecasts, with the stream first.

Every model call runs on one thread (on CUDA one thread does all the work; on a CPU the model uses
every core it is given). The stream's calls (``ForecastLoop``'s rounds, model swaps) are submitted as
before, through ``run_in_executor``, and count as *waiting* from submission until done. Background
work (on-demand forecasts: :mod:`daemon.pipeline.ondemand`) goes through :meth:`run_when_idle`, which
submits only while no stream call is waiting, and one call at a time: a stream round that arrives
meanwhile waits for at most the one background call already running, whose size the caller caps.
"""

from __future__ import annotations

import asyncio
import threading
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

    @property
    def stream_waiting(self) -> int:
        """Stream calls submitted and not done yet."""
        return self._waiting

    def _done(self, _: object) -> None:
        with self._lock:
            self._waiting -= 1
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

    async def run_when_idle(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model thread once no stream call is waiting (one such call at a
        time; the stream's calls that come meanwhile wait for this one only)."""
        async with self._background:
            await self._until_idle()
            future = super().submit(fn, *args)  # not counted: the stream does not wait for itself
            return await asyncio.wrap_future(future)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


__all__ = ["ModelExecutor"]
