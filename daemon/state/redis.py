"""The Redis state store (redis.asyncio), on one server or a Redis Cluster; key schema in :mod:`daemon.state.base`.

On one server, a batch of updates is one Lua call. On a cluster (``KRONOS_REDIS__CLUSTER=true``) a
script may only name keys of one slot, so the same script runs once per symbol (all of a symbol's
keys share its hash tag), the calls in parallel; each is still atomic and idempotent per symbol.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from daemon.errors import CorruptState, StateError, StateUnavailable
from daemon.state.base import (
    StateStore,
    StateUpdate,
    SymbolState,
    bars_key,
    decode_bar,
    decode_tokens,
    encode_bar,
    encode_row,
    encode_tokens,
    forecast_key,
    format_source,
    generation_key,
    legacy_keys,
    meta_key,
    tokens_key,
    watermarks_key,
)
from daemon.state.redis_access import refusal
from daemon.state.redis_client import RedisClient, client_from_settings, redis_client
from daemon.state.redis_stream import StreamEntry, add_entries, last_id, read_entries, stream_key

# One atomic, idempotent step for a list of processed bars.
# KEYS: 4 per update (bars, tokens, meta, forecast), then the forecast stream's key when there is one.
# ARGV: max_context, ttl ('' = none), updated_ms, stream length, then 7 per update (ts_ns, bar, tokens
# ('' = delete), forecast, model_version, source, symbol).
# Timestamps are compared as decimal strings: Lua numbers are doubles and epoch ns exceed 2^53.
_APPLY_LUA = """
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local cap, ttl, now, maxlen = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local stream = nil
if #KEYS % 4 == 1 then stream = KEYS[#KEYS] end
local skipped = {}
for i = 0, math.floor(#KEYS / 4) - 1 do
  local bars, tokens, meta, forecast = KEYS[4*i+1], KEYS[4*i+2], KEYS[4*i+3], KEYS[4*i+4]
  local a = 4 + 7 * i
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
    if stream then
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'symbol', ARGV[a+7], 'forecast', ARGV[a+4])
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


# Replace one symbol's ring and last-bar meta with a restored state, if its last_ts is unchanged.
# KEYS: bars, tokens, meta. ARGV: expected last_ts ('' = absent), last_ts, source, context_complete,
# then the bars, oldest first.
_RESTORE_LUA = """
local cur = redis.call('HGET', KEYS[3], 'last_ts') or ''
if cur ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
for i = 5, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('HSET', KEYS[3], 'last_ts', ARGV[2], 'source', ARGV[3], 'context_complete', ARGV[4])
return 1
"""


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class RedisStateStore(StateStore):
    """Per-symbol state in Redis. ``client`` is a ``redis.asyncio.Redis`` (or ``RedisCluster``) with
    ``decode_responses=False``."""

    def __init__(
        self, client: RedisClient, key_prefix: str, max_context: int, acl_user: str | None = None
    ) -> None:
        super().__init__(key_prefix, max_context)
        self._client = client
        self.stream_length = 0  # forecasts kept in the forecast stream (redis_stream.py); 0: none written
        self.acl_user = acl_user  # named in a NOPERM refusal (None: the default user)
        self.cluster = isinstance(client, RedisCluster)
        self._apply = client.register_script(_APPLY_LUA)
        self._migrate = client.register_script(_MIGRATE_LUA)
        self.migrated = 0  # symbols moved from the legacy key schema by this store
        self._loaded = False  # cluster: the apply script is loaded on the primaries
        self._restore = client.register_script(_RESTORE_LUA)

    @classmethod
    def from_url(cls, url: str, key_prefix: str, max_context: int, **options: Any) -> RedisStateStore:
        """A store on its own client of ``url``; ``options``: those of
        :func:`~daemon.state.redis_client.redis_client` (``cluster``, ``username``, ``password``, ...)."""
        return cls(redis_client(url, **options), key_prefix, max_context, acl_user=options.get("username"))

    @classmethod
    def from_settings(cls, r: Any, max_context: int, stream_length: int = 0) -> RedisStateStore:
        """The store of ``KRONOS_REDIS__*`` (``r``: RedisSettings); ``stream_length``: see redis_stream."""
        store = cls(client_from_settings(r), r.key_prefix, max_context, acl_user=r.username or None)
        store.stream_length = stream_length
        return store

    def _unavailable(self, what: str, exc: BaseException) -> StateUnavailable:
        """``what`` failed: an outage, or (NOPERM) the ACL user lacking a grant, said so."""
        return StateUnavailable(f"{what} failed: {refusal(exc, self.acl_user) or exc}")

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
                    pipe.hmget(meta_key(p, s), "last_ts", "source", "context_complete")
                replies = await pipe.execute()
            unseen = [s for i, s in enumerate(symbols) if not replies[3 * i] and replies[3 * i + 2][0] is None]
            moved = await self._migrate_legacy(unseen) if unseen else {}
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"reading state of {len(symbols)} symbols from Redis", exc) from exc
        states = {}
        for i, s in enumerate(symbols):
            raw_bars, raw_tokens, (raw_last, raw_source, raw_complete) = moved.get(s) or replies[3 * i : 3 * i + 3]
            where = bars_key(p, s)
            try:
                bars = [decode_bar(raw, where) for raw in raw_bars]
            except StateError as exc:
                raise CorruptState(str(exc), s) from exc
            token_state, token_version = decode_tokens(raw_tokens)
            last_ts = int(raw_last) if raw_last is not None else None
            source = raw_source.decode() if raw_source is not None else None
            states[s] = SymbolState(s, self.max_context, bars, token_state, token_version, last_ts, source)
            states[s].complete = raw_complete != b"0"
        return states

    async def _migrate_legacy(self, symbols: Sequence[str]) -> dict[str, list[Any]]:
        """Move the legacy keys of ``symbols`` (where any exist) to the new names; returns, per moved
        symbol, the (bars, tokens, [last_ts, source, context_complete]) replies that load() reads."""
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
            moved[s] = [raw_bars, raw_tokens, [meta.get(b"last_ts"), meta.get(b"source"), meta.get(b"context_complete")]]
        return moved

    async def apply(self, updates: Sequence[StateUpdate], forecast_ttl_s: int | None = None) -> list[str]:
        if not updates:
            return []
        head: list[Any] = [
            self.max_context,
            "" if forecast_ttl_s is None else forecast_ttl_s,
            int(time.time() * 1e3),
            self.stream_length,
        ]
        try:
            if self.cluster:  # one call per symbol: a script's keys must share a slot
                skipped = await self._apply_per_symbol(updates, head)
                if self.stream_length:  # the stream's slot is not the symbols': added apart
                    done = [(u.symbol, u.forecast_json) for i, u in enumerate(updates) if i not in skipped]
                    await add_entries(self._client, stream_key(self.key_prefix), self.stream_length, done)
            else:
                keys, args = self._call_args(updates, head)
                if self.stream_length:
                    keys.append(stream_key(self.key_prefix))
                skipped = [int(i) for i in await self._apply(keys=keys, args=args)]
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"writing state of {len(updates)} bars to Redis", exc) from exc
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
                u.symbol,
            ]
        return keys, args

    async def generation(self) -> str:
        key = generation_key(self.key_prefix)
        try:
            async with self._pipeline() as pipe:  # one round trip per batch
                pipe.set(key, uuid.uuid4().hex, nx=True)
                pipe.get(key)
                _, raw = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable("reading the state generation from Redis", exc) from exc
        return "" if raw is None else _text(raw)

    async def watermarks(self) -> dict[str, int]:
        try:
            raw = await self._client.hgetall(watermarks_key(self.key_prefix))
        except (RedisError, OSError) as exc:
            raise self._unavailable("reading the watermarks from Redis", exc) from exc
        return {_text(k): int(v) for k, v in raw.items()}

    async def set_watermarks(self, marks: dict[str, int]) -> None:
        if not marks:
            return
        try:
            await self._client.hset(watermarks_key(self.key_prefix), mapping=marks)  # type: ignore[arg-type]
        except (RedisError, OSError) as exc:
            raise self._unavailable("writing the watermarks to Redis", exc) from exc

    async def restore(self, states: Sequence[tuple[SymbolState, int | None]]) -> list[str]:
        p = self.key_prefix
        written = []
        try:
            for state, expected in states:
                args: list[Any] = [
                    "" if expected is None else str(expected),
                    str(state.last_ts),
                    format_source(state.source),
                    "1" if state.complete else "0",
                ]
                args += [encode_row(t, r) for t, r in zip(state.timestamps, state.rows, strict=True)]
                keys = [bars_key(p, state.symbol), tokens_key(p, state.symbol), meta_key(p, state.symbol)]
                if await self._restore(keys=keys, args=args):
                    written.append(state.symbol)
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"restoring state of {len(states)} symbols in Redis", exc) from exc
        return written

    async def latest_forecast(self, symbol: str) -> dict[str, Any] | None:
        try:
            raw = await self._client.get(forecast_key(self.key_prefix, symbol))
            if raw is None:  # not moved from the legacy schema yet (the daemon moves it on first load)
                raw = await self._client.get(legacy_keys(self.key_prefix, symbol)[3])
        except RedisError as exc:
            raise self._unavailable(f"reading the forecast of {symbol!r} from Redis", exc) from exc
        return None if raw is None else dict(json.loads(raw))

    async def forecast_from(self, symbol: str, source: str) -> bytes | None:
        p = self.key_prefix
        try:
            async with self._pipeline() as pipe:
                pipe.hget(meta_key(p, symbol), "source")
                pipe.get(forecast_key(p, symbol))
                stored_source, forecast = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"reading the forecast of {symbol!r} from Redis", exc) from exc
        if stored_source is None or stored_source.decode() != source:
            return None
        return bytes(forecast) if forecast is not None else None

    async def stream_tail(self) -> str:
        try:
            return await last_id(self._client, stream_key(self.key_prefix))
        except (RedisError, OSError) as exc:
            raise self._unavailable("reading the forecast stream from Redis", exc) from exc

    async def read_stream(self, after: str, count: int, block_ms: int = 0) -> list[StreamEntry]:
        try:
            return await read_entries(self._client, stream_key(self.key_prefix), after, count, block_ms)
        except (RedisError, OSError) as exc:
            raise self._unavailable("reading the forecast stream from Redis", exc) from exc

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            hint = refusal(exc, self.acl_user)
            if hint is None and "CERTIFICATE_VERIFY_FAILED" in str(exc):
                hint = (
                    f"Redis's TLS certificate is not trusted ({exc}): set KRONOS_REDIS__SSL_CA_CERTS to the CA "
                    "that signed it"
                )
            raise StateUnavailable(hint or f"Redis is not reachable: {exc}; check KRONOS_REDIS__URL") from exc

    async def close(self) -> None:
        try:
            await self._client.aclose()  # type: ignore[attr-defined]  # types-redis lags redis 5+
        except (RedisError, OSError) as exc:
            raise StateError(f"closing the Redis connection failed: {exc}") from exc
