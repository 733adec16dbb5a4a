"""The Redis state store (redis.asyncio), on one server or a Redis Cluster; key schema in :mod:`daemon.state`.

On one server, a batch of updates is one Lua call. On a cluster (``KRONOS_REDIS__CLUSTER=true``) a
script may only name keys of one slot, so the same script runs once per symbol (all of a symbol's
keys share its hash tag), the calls in parallel; each is still atomic and idempotent per symbol.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from daemon.errors import StateError, StateUnavailable
from daemon.state import (
    StateStore,
    StateUpdate,
    SymbolState,
    bars_key,
    decode_bar,
    decode_tokens,
    encode_bar,
    encode_tokens,
    forecast_key,
    legacy_keys,
    meta_key,
    tokens_key,
)

RedisClient = aioredis.Redis | RedisCluster

# One atomic, idempotent step for a list of processed bars.
# KEYS: 4 per update (bars, tokens, meta, forecast). ARGV: max_context, ttl ('' = none), updated_ms,
# then 6 per update (ts_ns, bar, tokens ('' = delete), forecast, model_version, source).
# Timestamps are compared as decimal strings: Lua numbers are doubles and epoch ns exceed 2^53.
_APPLY_LUA = """
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local cap, ttl, now = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local skipped = {}
for i = 0, #KEYS / 4 - 1 do
  local bars, tokens, meta, forecast = KEYS[4*i+1], KEYS[4*i+2], KEYS[4*i+3], KEYS[4*i+4]
  local a = 3 + 6 * i
  local ts = ARGV[a+1]
  local last = redis.call('HGET', meta, 'last_ts')
  if last and not newer(ts, last) then
    table.insert(skipped, i)
  else
    redis.call('RPUSH', bars, ARGV[a+2])
    redis.call('LTRIM', bars, -cap, -1)
    if ARGV[a+3] == '' then redis.call('DEL', tokens) else redis.call('SET', tokens, ARGV[a+3]) end
    redis.call('HSET', meta, 'last_ts', ts, 'model_version', ARGV[a+5], 'updated_ms', now, 'source', ARGV[a+6])
    if ttl == '' then
      redis.call('SET', forecast, ARGV[a+4])
    else
      redis.call('SET', forecast, ARGV[a+4], 'EX', ttl)
    end
  end
end
return skipped
"""

# Moves one symbol's legacy keys to the cluster-ready names unless the new meta exists already.
# KEYS: the new bars, tokens, meta, forecast. ARGV: tokens ('' = none), forecast ('' = none), forecast
# PTTL in ms ('' = none), meta field count n, n field/value pairs, then the bars oldest first.
_MIGRATE_LUA = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if ARGV[1] ~= '' then redis.call('SET', KEYS[2], ARGV[1]) end
if ARGV[2] ~= '' then
  if ARGV[3] == '' then redis.call('SET', KEYS[4], ARGV[2]) else redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[3]) end
end
local n = tonumber(ARGV[4])
for i = 0, n - 1 do redis.call('HSET', KEYS[3], ARGV[5 + 2*i], ARGV[6 + 2*i]) end
for i = 5 + 2*n, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
return 1
"""


class RedisStateStore(StateStore):
    """Per-symbol state in Redis. ``client`` is a ``redis.asyncio.Redis`` (or ``RedisCluster``) with
    ``decode_responses=False``."""

    def __init__(self, client: RedisClient, key_prefix: str, max_context: int) -> None:
        super().__init__(key_prefix, max_context)
        self._client = client
        self.cluster = isinstance(client, RedisCluster)
        self._apply = client.register_script(_APPLY_LUA)
        self._migrate = client.register_script(_MIGRATE_LUA)
        self.migrated = 0  # symbols moved from the legacy key schema by this store
        self._loaded = False  # cluster: the apply script is loaded on the primaries

    @classmethod
    def from_url(
        cls,
        url: str,
        key_prefix: str,
        max_context: int,
        password: str | None = None,
        socket_timeout_s: float = 5.0,
        cluster: bool = False,
    ) -> RedisStateStore:
        """A store on ``url``; ``cluster``: a Redis Cluster (``url`` names any of its nodes)."""
        extra: dict[str, Any] = {} if password is None else {"password": password}
        extra.update(socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
        try:
            client: RedisClient
            if cluster:
                client = RedisCluster.from_url(url, **extra)
            else:
                client = aioredis.Redis.from_url(url, health_check_interval=30, **extra)
        except (ValueError, RedisError) as exc:
            raise StateError(
                f"cannot use Redis URL {url!r}: {exc}; check KRONOS_REDIS__URL (and KRONOS_REDIS__CLUSTER)"
            ) from exc
        return cls(client, key_prefix, max_context)

    def _pipeline(self) -> Any:
        # A cluster pipeline splits the commands by node; neither kind is a MULTI transaction.
        return self._client.pipeline() if self.cluster else self._client.pipeline(transaction=False)

    async def load(self, symbols: Sequence[str]) -> dict[str, SymbolState]:
        if not symbols:
            return {}
        p = self.key_prefix
        try:
            async with self._pipeline() as pipe:
                for s in symbols:
                    pipe.lrange(bars_key(p, s), 0, -1)
                    pipe.get(tokens_key(p, s))
                    pipe.hmget(meta_key(p, s), "last_ts", "source")
                replies = await pipe.execute()
            unseen = [s for i, s in enumerate(symbols) if not replies[3 * i] and replies[3 * i + 2][0] is None]
            moved = await self._migrate_legacy(unseen) if unseen else {}
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"reading state of {len(symbols)} symbols from Redis failed: {exc}") from exc
        states = {}
        for i, s in enumerate(symbols):
            raw_bars, raw_tokens, (raw_last, raw_source) = moved.get(s) or replies[3 * i : 3 * i + 3]
            where = bars_key(p, s)
            bars = [decode_bar(raw, where) for raw in raw_bars]
            token_state, token_version = decode_tokens(raw_tokens)
            last_ts = int(raw_last) if raw_last is not None else None
            source = raw_source.decode() if raw_source is not None else None
            states[s] = SymbolState(s, self.max_context, bars, token_state, token_version, last_ts, source)
        return states

    async def _migrate_legacy(self, symbols: Sequence[str]) -> dict[str, list[Any]]:
        """Move the legacy keys of ``symbols`` (where any exist) to the new names; returns, per moved
        symbol, the (bars, tokens, [last_ts, source]) replies that load() reads."""
        p = self.key_prefix
        async with self._pipeline() as pipe:
            for s in symbols:
                bars, tokens, meta, forecast = legacy_keys(p, s)
                pipe.lrange(bars, 0, -1)
                pipe.get(tokens)
                pipe.hgetall(meta)
                pipe.get(forecast)
                pipe.pttl(forecast)
            replies = await pipe.execute()
        moved: dict[str, list[Any]] = {}
        for i, s in enumerate(symbols):
            raw_bars, raw_tokens, meta, forecast, pttl = replies[5 * i : 5 * i + 5]
            if not raw_bars and not meta:
                continue
            pairs = [x for kv in meta.items() for x in kv]
            args = [raw_tokens or "", forecast or "", pttl if forecast and pttl > 0 else "", len(meta)]
            keys = [bars_key(p, s), tokens_key(p, s), meta_key(p, s), forecast_key(p, s)]
            await self._migrate(keys=keys, args=[*args, *pairs, *raw_bars])
            if self.cluster:  # the legacy keys of a symbol lie in different slots: one DEL each
                await asyncio.gather(*(self._client.delete(k) for k in legacy_keys(p, s)))
            else:
                await self._client.delete(*legacy_keys(p, s))
            self.migrated += 1
            moved[s] = [raw_bars, raw_tokens, [meta.get(b"last_ts"), meta.get(b"source")]]
        return moved

    async def apply(self, updates: Sequence[StateUpdate], forecast_ttl_s: int | None = None) -> list[str]:
        if not updates:
            return []
        head: list[Any] = [
            self.max_context,
            "" if forecast_ttl_s is None else forecast_ttl_s,
            int(time.time() * 1e3),
        ]
        try:
            if self.cluster:  # one call per symbol: a script's keys must share a slot
                skipped = await self._apply_per_symbol(updates, head)
            else:
                keys, args = self._call_args(updates, head)
                skipped = [int(i) for i in await self._apply(keys=keys, args=args)]
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"writing state of {len(updates)} bars to Redis failed: {exc}") from exc
        return [updates[i].symbol for i in skipped]

    async def _apply_per_symbol(self, updates: Sequence[StateUpdate], head: list[Any]) -> list[int]:
        """The script once per update, in one cluster pipeline (split by node); the indexes refused."""
        for attempt in (0, 1):
            if not self._loaded:
                await self._client.script_load(_APPLY_LUA)  # on every primary
                self._loaded = True
            async with self._client.pipeline() as pipe:
                for u in updates:
                    keys, args = self._call_args([u], head)
                    pipe.execute_command("EVALSHA", self._apply.sha, len(keys), *keys, *args)
                try:
                    replies = await pipe.execute()
                except NoScriptError:  # a node that never saw the script (new, or failed over)
                    if attempt:
                        raise
                    self._loaded = False
                    continue
            return [i for i, r in enumerate(replies) if r]
        raise AssertionError("unreachable")

    def _call_args(self, updates: Sequence[StateUpdate], head: list[Any]) -> tuple[list[str], list[Any]]:
        p = self.key_prefix
        keys: list[str] = []
        args: list[Any] = list(head)
        for u in updates:
            keys += [
                bars_key(p, u.symbol),
                tokens_key(p, u.symbol),
                meta_key(p, u.symbol),
                forecast_key(p, u.symbol),
            ]
            args += [
                str(u.bar.ts_ns),
                encode_bar(u.bar),
                encode_tokens(u.token_state, u.model_version),
                u.forecast_json,
                u.model_version,
                u.source,
            ]
        return keys, args

    async def latest_forecast(self, symbol: str) -> dict[str, Any] | None:
        try:
            raw = await self._client.get(forecast_key(self.key_prefix, symbol))
            if raw is None:  # not moved from the legacy schema yet (the daemon moves it on first load)
                raw = await self._client.get(legacy_keys(self.key_prefix, symbol)[3])
        except RedisError as exc:
            raise StateUnavailable(f"reading the forecast of {symbol!r} from Redis failed: {exc}") from exc
        return None if raw is None else dict(json.loads(raw))

    async def forecast_from(self, symbol: str, source: str) -> bytes | None:
        p = self.key_prefix
        try:
            async with self._pipeline() as pipe:
                pipe.hget(meta_key(p, symbol), "source")
                pipe.get(forecast_key(p, symbol))
                stored_source, forecast = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"reading the forecast of {symbol!r} from Redis failed: {exc}") from exc
        if stored_source is None or stored_source.decode() != source:
            return None
        return bytes(forecast) if forecast is not None else None

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"Redis is not reachable: {exc}; check KRONOS_REDIS__URL") from exc

    async def close(self) -> None:
        try:
            await self._client.aclose()  # type: ignore[attr-defined]  # types-redis lags redis 5+
        except (RedisError, OSError) as exc:
            raise StateError(f"closing the Redis connection failed: {exc}") from exc
