"""Waiting out an outage of Kafka or Redis: bounded exponential backoff with jitter, per service.

Every call to Kafka or Redis that the loop or the start-up makes goes through :meth:`Outages.call`.
A :class:`~daemon.errors.BusError` or :class:`~daemon.errors.StateError` (except
:class:`~daemon.errors.CommitRefused` and :class:`~daemon.errors.CorruptState`, which are not outages) starts or continues an outage of that
service: the call is retried after ``min(max_s, initial_s * 2**attempt)`` seconds scaled by a random
factor in [0.5, 1] (so replicas do not retry in step), until it succeeds (the outage ends) or the
outage has lasted ``give_up_s`` (:class:`~daemon.errors.OutageTooLong`: the process ends). Meanwhile
readiness reports the service as down. The calls retried are idempotent: a state write skips a bar
already stored, a republished forecast has the same id, a commit names absolute offsets.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from daemon.errors import BusError, CommitRefused, CorruptState, OutageTooLong, StateError

log = structlog.get_logger("kronos.retry")

T = TypeVar("T")


class Abandoned(Exception):
    """A retry was given up because the loop is stopping or its partitions are being revoked."""


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """The wait before retry number ``attempt`` (0-based): exponential, capped, jittered to [0.5, 1]x."""
    base = min(max_s, initial_s * (2 ** min(attempt, 30)))
    return base * (0.5 + 0.5 * (rng or random).random())


class Outages:
    """Tracks which services are down since when, and retries calls to them."""

    def __init__(
        self,
        initial_s: float = 0.1,
        max_s: float = 5.0,
        give_up_s: float | None = None,
        on_change: Callable[[str, bool], None] | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.give_up_s = give_up_s
        self._on_change = on_change
        self._on_retry = on_retry
        self.down_since: dict[str, float] = {}  # service -> time.monotonic() of the first failure
        self.last_error: dict[str, str] = {}

    def down(self) -> dict[str, str]:
        """Services in an outage now, with their last error."""
        return {s: self.last_error.get(s, "") for s in self.down_since}

    def failed(self, service: str, error: BaseException) -> float:
        """Record a failure; returns how long the outage has lasted. Raises OutageTooLong past give-up."""
        now = time.monotonic()
        if service not in self.down_since:
            self.down_since[service] = now
            log.warning("service unavailable; waiting it out", service=service, error=str(error))
            if self._on_change is not None:
                self._on_change(service, False)
        self.last_error[service] = str(error)
        lasted = now - self.down_since[service]
        if self.give_up_s is not None and lasted > self.give_up_s:
            raise OutageTooLong(
                f"{service} has been unavailable for {lasted:.0f} s, longer than KRONOS_OUTAGE_GIVE_UP_S="
                f"{self.give_up_s:g}; last error: {error}"
            ) from error
        return lasted

    def recovered(self, service: str) -> None:
        since = self.down_since.pop(service, None)
        if since is not None:
            self.last_error.pop(service, None)
            log.info("service back", service=service, outage_s=round(time.monotonic() - since, 3))
            if self._on_change is not None:
                self._on_change(service, True)

    async def call(
        self,
        service: str,
        what: str,
        fn: Callable[[], Awaitable[T]],
        abandon: Callable[[], bool] | None = None,
        on_attempt: Callable[[], None] | None = None,
    ) -> T:
        """``await fn()``, retried with backoff while ``service`` fails; ``abandon()`` true between
        attempts raises :class:`Abandoned`; ``on_attempt`` is called before each try (a liveness tick)."""
        attempt = 0
        while True:
            if on_attempt is not None:
                on_attempt()
            try:
                result = await fn()
            except (CommitRefused, CorruptState):
                raise  # not an outage: a rebalance, one symbol's unreadable record
            except (BusError, StateError) as exc:
                lasted = self.failed(service, exc)
                delay = backoff_delay(attempt, self.initial_s, self.max_s)
                attempt += 1
                if self._on_retry is not None:
                    self._on_retry(service)
                log.info(
                    "retrying", service=service, what=what, attempt=attempt, delay_s=round(delay, 3),
                    outage_s=round(lasted, 3), error=str(exc),
                )  # fmt: skip
                await self._sleep(delay, abandon)
                continue
            self.recovered(service)
            return result

    @staticmethod
    async def _sleep(delay: float, abandon: Callable[[], bool] | None) -> None:
        deadline = time.monotonic() + delay
        while True:
            if abandon is not None and abandon():
                raise Abandoned("stopping or giving partitions up during an outage")
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.1))
