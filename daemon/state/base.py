"""Per-symbol state in Redis: the key schema, the record types, their encoding, the StateStore interface.

``{prefix}`` is ``KRONOS_REDIS__KEY_PREFIX`` (default ``kronos``), and ``{SYMBOL}`` is the symbol in
braces, e.g. ``kronos:{600977.SH}:bars``. One set of keys per symbol:

| key | type | content |
|---|---|---|
| ``{prefix}:{SYMBOL}:bars`` | list | the raw-bar ring, oldest first, at most ``max_context`` entries; each entry JSON ``[ts_ns, open, high, low, close, volume, amount]`` |
| ``{prefix}:{SYMBOL}:tokens`` | string | the token cache, JSON ``{"model_version": ..., "state": TokenState.to_dict()}`` (s1/s2 ids as base64 int32, mean/std, anchor_ts, last_ts, refreshed_ts); absent in exact mode |
| ``{prefix}:{SYMBOL}:meta`` | hash | ``last_ts`` (epoch ns of the last processed bar), ``model_version``, ``updated_ms`` (wall clock), ``source`` (topic/partition/offset); ``context_complete`` = ``0`` for a symbol whose context was restored after a data loss but may miss older bars |
| ``{prefix}:{SYMBOL}:forecast`` | string | the latest forecast, the JSON published on the output topic; expires after ``KRONOS_REDIS__FORECAST_TTL_S`` when set |
| ``{prefix}:generation`` | string | a random token written once into an empty Redis: when it changes or vanishes, Redis lost its data (restart, failover) |
| ``{prefix}:watermarks`` | hash | ``topic/partition`` -> offset of the last input message whose state is written (set before each commit) |
| ``{prefix}:forecasts:stream`` | stream | every forecast written, oldest first, fields ``symbol`` and ``forecast`` (the JSON); capped near ``KRONOS_API__STREAM_LENGTH`` entries (``XADD MAXLEN ~``; 0: not written). The HTTP API's ``/v1/stream`` reads it (daemon/state/redis_stream.py) |

The braces make ``{SYMBOL}`` the Redis Cluster hash tag, so all keys of a symbol live in one slot.
Keys of the older schema (``{prefix}:bars:{symbol}``...) are moved to the new names the first time a
symbol is loaded (``legacy_keys``).

All four keys of a processed bar are written in one atomic step (a Lua script on Redis): ring append
and trim, token cache, meta and latest forecast, and on one server the forecast stream's entry (on a
Redis Cluster the stream, one key in its own slot, gets the batch's entries right after). The step is idempotent: it skips a bar whose ``ts`` is
not after the stored ``last_ts``, so a retried write or a stale writer cannot append a bar twice.
Reading the latest forecast: ``GET {prefix}:{SYMBOL}:forecast`` (or ``kronos-stream forecast SYMBOL``).
"""
# The docstring above is the key schema's only description: docs/contracts/redis.md renders it
# (mkdocstrings), so it stays Markdown.

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from daemon.errors import StateError
from daemon.io.messages import Bar
from kronos_core.stream_types import TokenState


def _tagged(prefix: str, symbol: str, kind: str) -> str:
    # The symbol in braces is the key's Redis Cluster hash tag: all keys of a symbol share one slot,
    # so the atomic Lua update (which names them all) runs on a cluster too.
    return f"{prefix}:{{{symbol}}}:{kind}"


def bars_key(prefix: str, symbol: str) -> str:
    return _tagged(prefix, symbol, "bars")


def tokens_key(prefix: str, symbol: str) -> str:
    return _tagged(prefix, symbol, "tokens")


def meta_key(prefix: str, symbol: str) -> str:
    return _tagged(prefix, symbol, "meta")


def forecast_key(prefix: str, symbol: str) -> str:
    return _tagged(prefix, symbol, "forecast")


def legacy_keys(prefix: str, symbol: str) -> tuple[str, str, str, str]:
    """The keys before the cluster-ready schema (``{prefix}:bars:{symbol}``...): bars, tokens, meta,
    forecast. The Redis store moves a symbol's legacy keys to the new ones the first time it loads it."""
    return (
        f"{prefix}:bars:{symbol}",
        f"{prefix}:tokens:{symbol}",
        f"{prefix}:meta:{symbol}",
        f"{prefix}:forecast:{symbol}",
    )


def generation_key(prefix: str) -> str:
    return f"{prefix}:generation"


def watermarks_key(prefix: str) -> str:
    return f"{prefix}:watermarks"


class SymbolState:
    """One symbol's working state: the bar ring, the token cache and the last-seen bar time.

    The ring is two numpy arrays (epoch-ns int64 [n], features float64 [n, 6]) used as a circular
    buffer that grows to ``max_context`` rows: 56 bytes a bar, against ~290 as a deque of Python
    tuples (measured: results/memory.md), which is what the daemon's memory grows with per symbol.
    """

    __slots__ = ("symbol", "max_context", "_ts", "_rows", "_head", "_n", "token_state", "token_version",
                 "last_ts", "source", "complete")  # fmt: skip

    def __init__(
        self,
        symbol: str,
        max_context: int,
        bars: Iterable[tuple[int, tuple[float, ...]]] = (),
        token_state: TokenState | None = None,
        token_version: str | None = None,
        last_ts: int | None = None,
        source: str | None = None,
    ) -> None:
        self.symbol = symbol
        self.max_context = max_context
        items = list(bars)[-max_context:]
        n = len(items)
        size = min(max_context, max(8, n))
        self._ts = np.zeros(size, dtype=np.int64)  # epoch ns
        self._rows = np.zeros((size, 6), dtype=np.float64)  # 6 raw features per bar
        if n:
            self._ts[:n] = [ts for ts, _ in items]
            self._rows[:n] = [row for _, row in items]
        self._head = 0  # index of the oldest bar (non-zero only once the ring is full)
        self._n = n
        self.token_state = token_state
        self.token_version = token_version  # model version that produced token_state
        if last_ts is None and n:
            last_ts = int(self._ts[n - 1])
        self.last_ts = last_ts
        self.source = parse_source(source)  # (topic, partition, offset) of the last processed message
        self.complete = True  # False: restored after a data loss, older bars may be missing

    def __len__(self) -> int:
        return self._n

    def _ordered(self) -> tuple[np.ndarray, np.ndarray]:
        """Timestamps [n] and rows [n, 6], oldest first (views when the ring has not wrapped)."""
        h, n = self._head, self._n
        if h == 0:
            return self._ts[:n], self._rows[:n]
        return np.concatenate([self._ts[h:], self._ts[:h]]), np.concatenate([self._rows[h:], self._rows[:h]])

    @property
    def timestamps(self) -> list[int]:
        """Epoch ns of the ring's bars, oldest first."""
        return [int(t) for t in self._ordered()[0]]

    @property
    def rows(self) -> list[tuple[float, ...]]:
        """The ring's 6 raw features per bar, oldest first."""
        return [tuple(r) for r in self._ordered()[1].tolist()]

    def nbytes(self) -> int:
        """Bytes of the ring's arrays (allocated, not only filled)."""
        return int(self._ts.nbytes + self._rows.nbytes)

    def window(self, bar: Bar) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The ring with ``bar`` appended, capped at max_context: values [L, 6], datetime64 [L], ns list."""
        keep = self.max_context - 1
        ts, rows = self._ordered()
        first = max(0, len(ts) - keep)
        ts, rows = ts[first:], rows[first:]
        values = np.empty((len(ts) + 1, 6), dtype=np.float64)  # [L, 6]
        values[:-1] = rows
        values[-1] = bar.values
        ts_list = [*ts.tolist(), bar.ts_ns]
        stamps = np.asarray(ts_list, dtype="datetime64[ns]")  # [L]
        return values, stamps, ts_list

    def _push(self, ts: int, row: tuple[float, ...]) -> None:
        size = len(self._ts)
        if self._n == size and size < self.max_context:  # grow (doubling) up to max_context
            grown = min(self.max_context, 2 * size)
            self._ts = np.concatenate([self._ts, np.zeros(grown - size, dtype=np.int64)])
            self._rows = np.concatenate([self._rows, np.zeros((grown - size, 6), dtype=np.float64)])
            size = grown
        if self._n < size:
            self._ts[self._n], self._rows[self._n] = ts, row
            self._n += 1
        else:  # full: overwrite the oldest
            self._ts[self._head], self._rows[self._head] = ts, row
            self._head = (self._head + 1) % size

    def append(
        self, bar: Bar, token_state: TokenState | None, model_version: str, source: str | None = None
    ) -> None:
        self._push(bar.ts_ns, bar.values)
        self.token_state = token_state
        self.token_version = model_version if token_state is not None else None
        self.last_ts = bar.ts_ns
        if source is not None:
            self.source = parse_source(source)


def parse_source(source: str | bytes | None) -> tuple[str, int, int] | None:
    """``"topic/partition/offset"`` as a tuple; None when absent or not in that form."""
    if source is None:
        return None
    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
    topic, _, rest = text.rpartition("/")
    topic, _, partition = topic.rpartition("/")
    try:
        return (topic, int(partition), int(rest)) if topic else None
    except ValueError:
        return None


class StateUpdate:
    """Everything written for one processed bar, in one atomic step."""

    __slots__ = ("symbol", "bar", "token_state", "forecast_json", "model_version", "source")

    def __init__(
        self,
        bar: Bar,
        token_state: TokenState | None,
        forecast_json: bytes,
        model_version: str,
        source: str,
    ) -> None:
        self.symbol = bar.symbol
        self.bar = bar
        self.token_state = token_state
        self.forecast_json = forecast_json
        self.model_version = model_version
        self.source = source  # "topic/partition/offset" of the input message


# -- encoding shared by the implementations -------------------------------------------------------


def encode_bar(bar: Bar) -> bytes:
    return encode_row(bar.ts_ns, bar.values)


def encode_row(ts_ns: int, values: Sequence[float]) -> bytes:
    return json.dumps([ts_ns, *values], allow_nan=False, separators=(",", ":")).encode()


def format_source(source: tuple[str, int, int] | None) -> str:
    return "" if source is None else f"{source[0]}/{source[1]}/{source[2]}"


def merge_restored(restored: SymbolState, stored: SymbolState) -> SymbolState | None:
    """The union of the restored and the stored bars (by ts, the stored row wins), capped at the ring
    size; None when that adds nothing to what the store holds."""
    rows = dict(zip(restored.timestamps, restored.rows, strict=True))
    rows.update(zip(stored.timestamps, stored.rows, strict=True))
    newer = stored.last_ts is None or (restored.last_ts is not None and restored.last_ts > stored.last_ts)
    last_ts, source = (restored.last_ts, restored.source) if newer else (stored.last_ts, stored.source)
    cap = stored.max_context
    merged = SymbolState(
        stored.symbol, cap, sorted(rows.items())[-cap:], None, None, last_ts, format_source(source) or None
    )
    merged.complete = restored.complete or len(merged) >= cap
    if list(merged.timestamps) == list(stored.timestamps) and last_ts == stored.last_ts:
        return None
    return merged


def decode_bar(raw: bytes | str, where: str) -> tuple[int, tuple[float, ...]]:
    try:
        item = json.loads(raw)
        ts, values = int(item[0]), tuple(float(v) for v in item[1:])
    except (ValueError, TypeError, IndexError) as exc:
        raise StateError(
            f"{where} holds an unreadable bar {raw!r}; delete the key to restart the symbol"
        ) from exc
    if len(values) != 6:
        raise StateError(f"{where} holds a bar with {len(values)} values, expected 6; delete the key")
    return ts, values


def encode_tokens(token_state: TokenState | None, model_version: str) -> bytes:
    if token_state is None:
        return b""
    return json.dumps({"model_version": model_version, "state": token_state.to_dict()}).encode()


def decode_tokens(raw: bytes | str | None) -> tuple[TokenState | None, str | None]:
    """The token cache and its model version; an unreadable cache reads as absent (a cold start)."""
    if not raw:
        return None, None
    try:
        data: dict[str, Any] = json.loads(raw)
        return TokenState.from_dict(data["state"]), str(data["model_version"])
    except (ValueError, TypeError, KeyError):
        return None, None


class StateStore(ABC):
    """Where per-symbol state lives between bars, restarts and rebalances."""

    def __init__(self, key_prefix: str, max_context: int) -> None:
        self.key_prefix = key_prefix
        self.max_context = max_context

    @abstractmethod
    async def load(self, symbols: Sequence[str]) -> dict[str, SymbolState]:
        """The stored state of each symbol (an empty state for a symbol never seen)."""

    @abstractmethod
    async def apply(self, updates: Sequence[StateUpdate], forecast_ttl_s: int | None = None) -> list[str]:
        """Write the updates atomically (ring append + trim, tokens, meta, forecast).

        At most one update per symbol. Returns the symbols whose update was refused because the store
        already holds a bar at or after it (a retried write, or another writer).
        """

    @abstractmethod
    async def generation(self) -> str:
        """The store's generation marker, created (a random token) when absent. A different value than
        the one seen before means the store lost its data."""

    @abstractmethod
    async def watermarks(self) -> dict[str, int]:
        """``"topic/partition"`` -> offset of the last input message whose state is written."""

    @abstractmethod
    async def set_watermarks(self, marks: dict[str, int]) -> None: ...

    @abstractmethod
    async def restore(self, states: Sequence[tuple[SymbolState, int | None]]) -> list[str]:
        """Replace each symbol's bar ring and last-bar meta with a restored state (token cache dropped)
        if the stored ``last_ts`` still equals the given expected one (None: absent). Returns the
        symbols written."""

    @abstractmethod
    async def latest_forecast(self, symbol: str) -> dict[str, Any] | None:
        """The latest forecast of ``symbol`` (decoded JSON), or None."""

    async def forecast_from(self, symbol: str, source: str) -> bytes | None:
        """The stored latest forecast of ``symbol`` (raw JSON) if the stored bar came from the input
        message ``source`` ("topic/partition/offset"), else None (exactly-once replays use it)."""
        return None

    async def stream_tail(self) -> str:
        """The id of the forecast stream's newest entry ("0-0" when empty; daemon/state/redis_stream.py)."""
        raise StateError(f"{type(self).__name__} keeps no forecast stream")

    async def read_stream(self, after: str, count: int, block_ms: int = 0) -> list[tuple[str, str, bytes]]:
        """Forecast-stream entries (id, symbol, forecast JSON) after id ``after``, oldest first, at most
        ``count``; with ``block_ms`` > 0 waits up to that long for one when there is none yet."""
        raise StateError(f"{type(self).__name__} keeps no forecast stream")

    @abstractmethod
    async def ping(self) -> None:
        """Raise StateError when the store cannot be reached."""

    @abstractmethod
    async def close(self) -> None: ...
