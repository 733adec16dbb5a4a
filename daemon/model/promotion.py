"""The decider: promotion of a challenger on live evidence, and automatic rollback of the champion.

Every replica runs a :class:`Decider`, and one of them decides: the holder of a Redis lock
(``{prefix}:challengers:decider``, taken with SET NX and an expiry of ``KRONOS_CHALLENGERS__LOCK_TTL_S``,
renewed while it lives). Every ``KRONOS_CHALLENGERS__DECIDE_EVERY_S`` it reads the per-forecast losses
that all replicas wrote (:mod:`daemon.scoring.paired`) and applies :mod:`daemon.model.policy`:

1. rollback first: when the champion's skill vs the walk over its last ``ROLLBACK_WINDOW`` realised
   forecasts is below ``ROLLBACK_SKILL`` and the pointer names a champion before it,
   the registry rolls back to it (:meth:`kronos_contract.registry.Registry.rollback`);
2. else each challenger against the champion: ``promote`` makes it the champion
   (:meth:`~kronos_contract.registry.Registry.promote`), ``keep`` withdraws it, ``undecided`` waits.

With ``KRONOS_CHALLENGERS__POLICY=automatic`` it acts; with ``advisory`` it only records. Every
decision goes to the registry (:func:`kronos_contract.challengers.record`) with its figures, once per
(decision, version, champion). The replicas' followers then hot-swap to the new champion as for any
promotion (a hint on the registry channel wakes them).

No loops: a version rolled back from is blocked from automatic promotion (a person can still promote
it); after an automatic promotion or rollback no other one happens for ``KRONOS_CHALLENGERS__COOLDOWN_S``;
a rollback only goes back along the pointer's history, never forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from daemon.model.policy import compare, rollback_due, weigh
from daemon.settings import Settings

log = structlog.get_logger("kronos.decider")

DECISIONS = ("promote", "keep", "rollback")


class DeciderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "kronos_challenger_decisions",
            "Live decisions recorded in the registry, by decision (promote, keep, rollback) and whether "
            "they were applied (automatic policy) or advisory.",
            ["decision", "applied"], registry=registry,
        )  # fmt: skip
        for d in DECISIONS:
            for applied in ("true", "false"):
                self.decisions.labels(d, applied)
        self.rollbacks = Counter(
            "kronos_model_rollbacks", "Automatic rollbacks of the champion to the previous one.", registry=registry
        )
        self.pvalue = Gauge(
            "kronos_challenger_pvalue", "One-sided Diebold-Mariano p-value that the challenger's CRPS is lower.",
            ["model_version"], registry=registry,
        )  # fmt: skip
        self.paired = Gauge(
            "kronos_challenger_paired_forecasts", "Realised forecasts the challenger and the champion share.",
            ["model_version"], registry=registry,
        )  # fmt: skip
        self.skill = Gauge(
            "kronos_live_skill_vs_walk", "1 - CRPS / rolling-volatility walk CRPS on the paired (challenger) or "
            "recent (champion) forecasts.", ["model_version", "role"], registry=registry,
        )  # fmt: skip
        self.leader = Gauge("kronos_challenger_decider", "1 on the replica that decides.", registry=registry)


def _epoch_ns(stamp: Any) -> int:
    if not isinstance(stamp, str):
        return 0
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return 0


class Decider:
    """Weighs the evidence and acts (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        registry: Any,
        losses: Any,  # MemoryLossLog | RedisLossLog
        metrics: DeciderMetrics,
        *,
        redis: Any = None,  # an asyncio Redis client for the lock; None: this process is alone
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.challengers
        self.registry = registry
        self.losses = losses
        self.metrics = metrics
        self._redis = redis
        self._on_change = on_change
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.lock_key = f"{settings.redis.key_prefix}:challengers:decider"
        self._task: asyncio.Task[None] | None = None

    # -- leadership -------------------------------------------------------------------------------

    async def leader(self) -> bool:
        """Take or renew the lock; True when this replica decides."""
        if self._redis is None:
            return True
        ttl_ms = int(self.config.lock_ttl_s * 1000)
        if await self._redis.set(self.lock_key, self.identity, nx=True, px=ttl_ms):
            return True
        holder = await self._redis.get(self.lock_key)
        if holder is not None and (holder.decode() if isinstance(holder, bytes) else holder) == self.identity:
            await self._redis.pexpire(self.lock_key, ttl_ms)
            return True
        return False

    async def release(self) -> None:
        if self._redis is None:
            return
        with contextlib.suppress(Exception):
            holder = await self._redis.get(self.lock_key)
            if holder is not None and (holder.decode() if isinstance(holder, bytes) else holder) == self.identity:
                await self._redis.delete(self.lock_key)

    # -- one decision round -----------------------------------------------------------------------

    async def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """One round; returns the decisions recorded in it."""
        from kronos_contract import challengers as listing

        lead = await self.leader()
        self.metrics.leader.set(1 if lead else 0)
        if not lead or self.config.policy == "off":
            return []
        now = time.time() if now is None else now
        pointer = await asyncio.to_thread(self.registry.pointer)
        champion = pointer.get("version")
        if not champion:
            return []
        doc = await asyncio.to_thread(listing.read, self.registry)
        automatic = self.config.policy == "automatic"
        last_applied = max((_epoch_ns(d.get("at")) for d in doc["decisions"] if d.get("applied")), default=0)
        cooling = now * 1e9 - last_applied < self.config.cooldown_s * 1e9
        champ_rows = await self.losses.read(champion)
        recorded: list[dict[str, Any]] = []

        check = rollback_due(champ_rows, self.config.rollback_window, self.config.rollback_skill)
        if check.skill_vs_walk is not None:
            self.metrics.skill.labels(champion, "champion").set(check.skill_vs_walk)
        history = pointer.get("history") or []
        if self.config.rollback and check.due and history:
            target = history[-1]
            decision = {"decision": "rollback", "version": target, "rolled_back_from": champion,
                        "champion": champion, **check.figures(), "threshold": self.config.rollback_skill}  # fmt: skip
            if automatic and not cooling:
                target = await asyncio.to_thread(self.registry.rollback)
                decision.update(version=target, applied=True)
                self.metrics.rollbacks.inc()
                log.warning("champion rolled back", rolled_back_from=champion, champion=target, **check.figures())
                recorded.append(await self._record(decision, doc))
                self._changed(target)
                return recorded
            if not automatic and not self._already(doc, decision):
                decision["applied"] = False
                recorded.append(await self._record(decision, doc))

        horizon = self.settings.model.horizon
        for entry in doc["challengers"]:
            version = entry["version"]
            if version == champion:
                continue
            rows = await self.losses.read(version)
            evidence = compare(champion, version, champ_rows, rows, horizon)
            self.metrics.paired.labels(version).set(evidence.n)
            if evidence.pvalue is not None:
                self.metrics.pvalue.labels(version).set(evidence.pvalue)
            if evidence.skill_vs_walk is not None:
                self.metrics.skill.labels(version, "challenger").set(evidence.skill_vs_walk)
            verdict = weigh(evidence, self.config.min_forecasts, self.config.level)
            if verdict == "undecided":
                continue
            decision = {"decision": verdict, "version": version, "champion": champion, **evidence.figures(),
                        "min_forecasts": self.config.min_forecasts, "level": self.config.level}  # fmt: skip
            blocked = version in doc["blocked"]
            if automatic and not cooling and not (verdict == "promote" and blocked):
                if verdict == "promote":
                    await asyncio.to_thread(self.registry.promote, version)
                else:
                    await asyncio.to_thread(listing.withdraw, self.registry, version)
                decision["applied"] = True
                log.info("challenger decided", **{k: v for k, v in decision.items() if k != "decision"},
                         verdict=verdict)  # fmt: skip
                recorded.append(await self._record(decision, doc))
                if verdict == "promote":
                    self._changed(version)
                    return recorded
                continue
            if not self._already(doc, decision):
                decision["applied"] = False
                decision["why_not_applied"] = (
                    "advisory policy" if not automatic else "blocked: rolled back before" if blocked else "cooldown"
                )
                recorded.append(await self._record(decision, doc))
        return recorded

    @staticmethod
    def _already(doc: dict[str, Any], decision: dict[str, Any]) -> bool:
        """The same advice (decision, version, champion) is recorded already."""
        return any(
            d.get("decision") == decision["decision"]
            and d.get("version") == decision["version"]
            and d.get("champion") == decision["champion"]
            for d in doc["decisions"]
        )

    async def _record(self, decision: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
        from kronos_contract import challengers as listing

        stored = await asyncio.to_thread(listing.record, self.registry, decision)
        doc["decisions"].append(stored)
        self.metrics.decisions.labels(stored["decision"], "true" if stored.get("applied") else "false").inc()
        return stored

    def _changed(self, champion: str) -> None:
        if self._on_change is not None:
            self._on_change(champion)

    # -- background -------------------------------------------------------------------------------

    def run_in_background(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="kronos-decider")

    async def _run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.decide_every_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or the registry out: try at the next round
                log.warning("weighing the challengers failed; retrying at the next round", error=repr(exc))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.release()
