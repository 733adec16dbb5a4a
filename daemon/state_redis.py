"""The Redis state store (redis.asyncio); key schema in :mod:`daemon.state`."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from daemon.errors import StateError
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
    meta_key,
    tokens_key,
)

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


class RedisStateStore(StateStore):
    """Per-symbol state in Redis. ``client`` is a ``redis.asyncio.Redis`` with ``decode_responses=False``."""

    def __init__(self, client: aioredis.Redis, key_prefix: str, max_context: int) -> None:
        super().__init__(key_prefix, max_context)
        self._client = client
        self._apply = client.register_script(_APPLY_LUA)

    @classmethod
    def from_url(
        cls,
        url: str,
        key_prefix: str,
        max_context: int,
        password: str | None = None,
        socket_timeout_s: float = 5.0,
    ) -> RedisStateStore:
        try:
            extra: dict[str, Any] = {} if password is None else {"password": password}
            client = aioredis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=socket_timeout_s,
                health_check_interval=30,
                **extra,
            )
        except (ValueError, RedisError) as exc:
            raise StateError(f"cannot use Redis URL {url!r}: {exc}; check KRONOS_REDIS__URL") from exc
        return cls(client, key_prefix, max_context)

    async def load(self, symbols: Sequence[str]) -> dict[str, SymbolState]:
        if not symbols:
            return {}
        p = self.key_prefix
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for s in symbols:
                    pipe.lrange(bars_key(p, s), 0, -1)
                    pipe.get(tokens_key(p, s))
                    pipe.hmget(meta_key(p, s), "last_ts", "source")
                replies = await pipe.execute()
        except RedisError as exc:
            raise StateError(f"reading state of {len(symbols)} symbols from Redis failed: {exc}") from exc
        states = {}
        for i, s in enumerate(symbols):
            raw_bars, raw_tokens, (raw_last, raw_source) = replies[3 * i : 3 * i + 3]
            where = bars_key(p, s)
            bars = [decode_bar(raw, where) for raw in raw_bars]
            token_state, token_version = decode_tokens(raw_tokens)
            last_ts = int(raw_last) if raw_last is not None else None
            source = raw_source.decode() if raw_source is not None else None
            states[s] = SymbolState(s, self.max_context, bars, token_state, token_version, last_ts, source)
        return states

    async def apply(self, updates: Sequence[StateUpdate], forecast_ttl_s: int | None = None) -> list[str]:
        if not updates:
            return []
        p = self.key_prefix
        keys: list[str] = []
        args: list[Any] = [
            self.max_context,
            "" if forecast_ttl_s is None else forecast_ttl_s,
            int(time.time() * 1e3),
        ]
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
        try:
            skipped = await self._apply(keys=keys, args=args)
        except RedisError as exc:
            raise StateError(f"writing state of {len(updates)} bars to Redis failed: {exc}") from exc
        return [updates[int(i)].symbol for i in skipped]

    async def latest_forecast(self, symbol: str) -> dict[str, Any] | None:
        try:
            raw = await self._client.get(forecast_key(self.key_prefix, symbol))
        except RedisError as exc:
            raise StateError(f"reading the forecast of {symbol!r} from Redis failed: {exc}") from exc
        return None if raw is None else dict(json.loads(raw))

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise StateError(f"Redis is not reachable: {exc}; check KRONOS_REDIS__URL") from exc

    async def close(self) -> None:
        try:
            await self._client.aclose()  # type: ignore[attr-defined]  # types-redis lags redis 5+
        except (RedisError, OSError) as exc:
            raise StateError(f"closing the Redis connection failed: {exc}") from exc
