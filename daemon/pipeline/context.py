"""What the loop's stages share while a fetch is processed: the stop and revocation flags, the
liveness tick, the phase clock, and Kafka and Redis calls retried through an outage."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from daemon.io.bus import DeadLetters, InMessage
from daemon.io.retry import Outages
from daemon.ops.metrics import LOOP_PHASES
from daemon.pipeline.plan import Letter

log = structlog.get_logger("kronos.loop")

T = TypeVar("T")


class PhaseClock:
    """Seconds spent per loop phase (daemon.metrics.LOOP_PHASES) while one fetch is processed."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(LOOP_PHASES, 0.0)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0


@dataclass
class LoopContext:
    """The loop's flags and calls, shared by its stages (intake, recovery, rounds)."""

    outages: Outages
    dead: DeadLetters
    stopping: bool = False
    revoking: bool = False
    revocations: int = 0  # revocations so far: a fetch that overlapped one is dropped
    last_tick: float = field(default_factory=time.monotonic)
    clock: PhaseClock = field(default_factory=PhaseClock)  # the fetch in process's phase times

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    @property
    def cut(self) -> bool:
        """Stopping or giving partitions up: a fetch stops between rounds."""
        return self.stopping or self.revoking

    async def io(self, service: str, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """A call to Kafka or Redis, retried through an outage; given up (:class:`Abandoned`) when the
        loop stops or its partitions are revoked meanwhile (nothing more of the batch is committed)."""
        return await self.outages.call(service, what, fn, abandon=lambda: self.cut, on_attempt=self.tick)

    async def dead_letter(self, letters: Sequence[Letter]) -> None:
        """Send dead letters (acknowledged), retrying through a broker outage only those not sent yet."""
        pending = list(letters)

        async def attempt() -> None:
            results = await asyncio.gather(*(self.dead.send(*x) for x in pending), return_exceptions=True)
            pending[:] = [x for x, r in zip(pending, results, strict=True) if isinstance(r, BaseException)]
            for r in results:
                if isinstance(r, BaseException):
                    raise r

        if pending:
            await self.io("kafka", "dead-lettering", attempt)


def error_letter(msg: InMessage, doing: str, exc: BaseException) -> Letter:
    """The dead letter of a message whose handling failed unexpectedly (logged)."""
    reason = f"{doing} failed: {type(exc).__name__}: {exc}"
    log.error("message failed; dead-lettering it", source=msg.source, error=reason)
    return msg, reason, "error"
