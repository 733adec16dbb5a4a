"""The score store in Redis, beside the daemon's state.

Redis keys (``{prefix}`` = ``KRONOS_REDIS__KEY_PREFIX``):

=========================================  ======  ===========================================================
``{prefix}:scoring:pending:{symbol}``      list    forecasts waiting for their horizon, oldest first (JSON,
                                                   arrays as base64 float64); at most ``horizon + 2``
``{prefix}:scores:{version}:{YYYYMMDDHH}`` hash    running sums of one model version's scores for the forecasts
                                                   scored in that UTC hour (wall clock): the
                                                   :class:`~kronos_core.scoring.ScoreAccumulator` fields,
                                                   ``n.3``, ``abs_err.3``, ``pinball.0.3``...; expire after
                                                   ``KRONOS_SCORING__RETENTION_H``
``{prefix}:scores:versions``               set     model versions with scores
=========================================  ======  ===========================================================

A version's bands with and without calibration (:mod:`daemon.scoring.calibration`) are both kept: the
published ones under ``{version}``, the model's own under ``{version}@model`` (only when calibration
is on).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from daemon.scoring.calibration import StoreKey
from daemon.scoring.paired import LossRow, RedisLossLog
from daemon.scoring.store import (
    ScoreStore,
    accumulator_fields,
    accumulator_from_fields,
    hour_bucket,
    hour_buckets,
    merge_into,
    shape_field,
)
from daemon.state.redis_client import client_from_settings, redis_client
from kronos_core.evaluation.publisher import POOLED
from kronos_core.scoring import ScoreAccumulator


class RedisScoreStore(ScoreStore):
    """In Redis, beside the daemon's state (its own connection)."""

    def __init__(self, client: Any, key_prefix: str, retention_h: int, acl_user: str | None = None) -> None:
        from redis.asyncio.cluster import RedisCluster

        self._client = client
        self.acl_user = acl_user  # named in a NOPERM refusal (None: the default user)
        self._prefix = key_prefix
        self._retention_s = retention_h * 3600
        self.cluster = isinstance(client, RedisCluster)
        self.losses = RedisLossLog(client, key_prefix, self._retention_s)

    @classmethod
    def from_url(cls, url: str, key_prefix: str, retention_h: int, **options: Any) -> RedisScoreStore:
        """A store on its own client of ``url``; ``options``: those of
        :func:`~daemon.state.redis_client.redis_client` (``cluster``, ``username``, ``password``, ...)."""
        return cls(redis_client(url, **options), key_prefix, retention_h, acl_user=options.get("username"))

    @classmethod
    def from_settings(cls, settings: Any) -> RedisScoreStore:
        """The store of ``KRONOS_REDIS__*`` and ``KRONOS_SCORING__RETENTION_H``."""
        r = settings.redis
        return cls(client_from_settings(r), r.key_prefix, settings.scoring.retention_h, acl_user=r.username or None)

    def _pipeline(self, transaction: bool = False) -> Any:
        # On a cluster the commands are split by node: every command names one key, none is multi-key,
        # but the round's writes are then not one transaction.
        return self._client.pipeline() if self.cluster else self._client.pipeline(transaction=transaction)

    def pending_key(self, symbol: str) -> str:
        return f"{self._prefix}:scoring:pending:{symbol}"

    def sums_key(self, version: str, bucket: str) -> str:
        return f"{self._prefix}:scores:{version}:{bucket}"

    @property
    def versions_key(self) -> str:
        return f"{self._prefix}:scores:versions"

    def calibration_key(self, version: str | None, key: str) -> str:
        """``{prefix}:calibration:{version}:{symbol}`` and ``{prefix}:calibration-pooled:{version}``
        (version None: the unversioned keys of older releases)."""
        if version is None:
            return f"{self._prefix}:calibration-pooled" if key == POOLED else f"{self._prefix}:calibration:{key}"
        if key == POOLED:
            return f"{self._prefix}:calibration-pooled:{version}"
        return f"{self._prefix}:calibration:{version}:{key}"

    async def calibration(self, keys: Sequence[StoreKey]) -> dict[StoreKey, dict[str, Any]]:
        async with self._pipeline() as pipe:
            for k in keys:
                pipe.get(self.calibration_key(*k))
            replies = await pipe.execute()
        return {k: json.loads(raw) for k, raw in zip(keys, replies, strict=True) if raw}

    async def pending(self, symbols: Sequence[str]) -> dict[str, list[bytes]]:
        async with self._pipeline() as pipe:
            for s in symbols:
                pipe.lrange(self.pending_key(s), 0, -1)
            replies = await pipe.execute()
        return dict(zip(symbols, replies, strict=True))

    async def commit(
        self,
        changes: dict[str, tuple[int, bytes]],
        sums: dict[str, ScoreAccumulator],
        *,
        cap: int,
        now: float,
        calibration: dict[tuple[str, str], dict[str, Any]] | None = None,
        losses: Sequence[LossRow] = (),
    ) -> None:
        bucket = hour_bucket(now)
        async with self._pipeline(transaction=True) as pipe:
            for (version, key), state in (calibration or {}).items():
                # kept as long as the scores: a symbol that stops trading leaves no key behind
                pipe.set(self.calibration_key(version, key), json.dumps(state, separators=(",", ":")), ex=self._retention_s)
            for symbol, (drop, new) in changes.items():
                key = self.pending_key(symbol)
                if drop:
                    pipe.ltrim(key, drop, -1)
                pipe.rpush(key, new)
                pipe.ltrim(key, -cap, -1)
                pipe.expire(key, self._retention_s)  # a symbol that stops trading leaves no key behind
            for version, acc in sums.items():
                key = self.sums_key(version, bucket)
                pipe.hset(key, "shape", shape_field(acc))
                for field, value in accumulator_fields(acc).items():
                    if value:
                        pipe.hincrbyfloat(key, field, value)
                pipe.expire(key, self._retention_s)
                pipe.sadd(self.versions_key, version)
            self.losses.add_to(pipe, losses)
            await pipe.execute()

    async def versions(self) -> list[str]:
        members = await self._client.smembers(self.versions_key)
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    async def read(
        self, versions: Sequence[str] | None, hours: int, now: float
    ) -> dict[str, ScoreAccumulator]:
        names = list(versions) if versions is not None else await self.versions()
        buckets = hour_buckets(now, hours)
        async with self._pipeline() as pipe:
            for v in names:
                for b in buckets:
                    pipe.hgetall(self.sums_key(v, b))
            replies = await pipe.execute()
        out: dict[str, ScoreAccumulator] = {}
        for i, v in enumerate(names):
            for raw in replies[i * len(buckets) : (i + 1) * len(buckets)]:
                if raw:
                    merge_into(out, v, accumulator_from_fields(raw))
        return out

    async def close(self) -> None:
        await self._client.aclose()
