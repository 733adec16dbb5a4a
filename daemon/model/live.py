"""Wiring of the shadow challengers and the decider into the daemon (a few calls from daemon/app.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from daemon.model.challengers import ChallengerMetrics, ChallengerSet
from daemon.model.follower import ModelFollower
from daemon.model.promotion import Decider, DeciderMetrics

log = structlog.get_logger("kronos.challengers")


class LiveModels:
    """The challengers (scored in the champion's rounds) and the decider (promotion, rollback)."""

    def __init__(self, follower: ModelFollower, registry_metrics: Any, states: Any, model_thread: Any) -> None:
        s = follower.settings
        self.settings = s
        self.follower = follower
        self.challengers = ChallengerSet(
            s, follower.registry, ChallengerMetrics(registry_metrics), cache_root=follower.cache_root / "challengers",
            states=states, model_thread=model_thread, public_key=follower.public_key,
        )  # fmt: skip
        self._decider_metrics = DeciderMetrics(registry_metrics)
        self.decider: Decider | None = None
        self._scored = False
        self._hints: set[asyncio.Task[None]] = set()

    def attach(self, scorer: Any, bus_out: Any) -> None:
        """The loop's scorer (challengers are scored by it) and producer (the shadow topic)."""
        self.challengers.scorer = scorer
        self.challengers.bus_out = bus_out
        if scorer is None:
            log.warning("online scoring is off (KRONOS_SCORING__ENABLED=false): no challenger is loaded, "
                        "and nothing is promoted or rolled back")  # fmt: skip
            return
        self._scored = True
        losses = scorer.store.losses
        losses.keep = self.settings.challengers.losses_keep
        self.decider = Decider(
            self.settings, self.follower.registry, losses, self._decider_metrics,
            redis=getattr(losses, "client", None), on_change=self._champion_changed,
        )  # fmt: skip

    def start(self) -> None:
        if not self._scored:  # challengers that nobody scores would only cost model time
            return
        self.challengers.run_in_background()
        if self.decider is not None:
            self.decider.run_in_background()

    def _champion_changed(self, version: str) -> None:
        self.follower.wake()
        self.challengers.wake()
        if self.settings.model.registry_hint:
            task = asyncio.get_running_loop().create_task(self._hint(version))
            self._hints.add(task)  # held until done (the loop keeps only weak references)
            task.add_done_callback(self._hints.discard)

    async def _hint(self, version: str) -> None:
        from daemon.state.redis_access import client_options
        from kronos_contract.registry import RegistryError, publish_hint

        r = self.settings.redis
        try:
            await publish_hint(r.url, r.key_prefix, version, **client_options(r))
        except RegistryError as exc:
            log.warning("the champion hint could not be sent; replicas see it at their next poll", error=str(exc))

    async def close(self) -> None:
        if self.decider is not None:
            await self.decider.close()
        await self.challengers.close()
