"""What the dashboard reads: symbols, recent bars and the forecasts over them from Redis; swaps and
dead letters from the daemon's own metrics.

Nothing here writes. The Redis reads use the daemon's key schema (:mod:`daemon.state.base`) and the
scorer's pending list (:mod:`daemon.scoring.pending`), through a client of their own.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from daemon.api.ui.chart import Fan, fan_from_forecast, ns_to_iso
from daemon.errors import StateError
from daemon.ops.metrics import INVALID_KINDS
from daemon.state.base import bars_key, decode_bar, forecast_key

CLOSE = 3  # the close among a stored bar's six values
MAX_SYMBOLS = 5000  # a symbol listing stops here (the page's picker is not meant for more)
SWAP_RESULTS_METRIC = "kronos_model_swaps_total"


@dataclass(frozen=True)
class Swap:
    at: float  # wall clock (epoch s)
    old: str
    new: str

    def to_dict(self) -> dict[str, Any]:
        return {"at": ns_to_iso(int(self.at * 1e9)), "old_version": self.old, "new_version": self.new}


class SwapLog:
    """The last swaps of the model in service (kept in memory; a restart starts it empty)."""

    def __init__(self, size: int = 20) -> None:
        self._swaps: deque[Swap] = deque(maxlen=size)

    def record(self, old_version: str, new_version: str) -> None:
        self._swaps.append(Swap(time.time(), old_version, new_version))

    def recent(self) -> list[dict[str, Any]]:
        """Newest first."""
        return [s.to_dict() for s in reversed(self._swaps)]


class DashboardData:
    """Reads for the dashboard. ``client``: a ``redis.asyncio`` client (or cluster client);
    ``registry``: the daemon's metrics registry; ``swaps``: its :class:`SwapLog`."""

    def __init__(
        self,
        client: Any,
        key_prefix: str,
        registry: CollectorRegistry | None = None,
        swaps: SwapLog | None = None,
    ) -> None:
        self.client = client
        self.prefix = key_prefix
        self.registry = registry
        self.swaps = swaps

    @classmethod
    def for_store(
        cls, store: Any, registry: CollectorRegistry | None = None, swaps: SwapLog | None = None
    ) -> DashboardData:
        """A reader on the daemon's Redis state store's own connection (the dashboard opens none).
        Raises StateError for a store not in Redis (the in-memory one of the demo and the tests)."""
        from daemon.state.redis import RedisStateStore

        if not isinstance(store, RedisStateStore):
            raise StateError(
                f"the dashboard reads Redis, and this daemon keeps its state in {type(store).__name__}; "
                "run it with KRONOS_REDIS__URL"
            )
        return cls(store._client, store.key_prefix, registry, swaps)  # noqa: SLF001 (the store's pool)

    async def symbols(self) -> list[str]:
        """The symbols with a latest forecast in Redis, sorted (at most :data:`MAX_SYMBOLS`)."""
        head, tail = f"{self.prefix}:{{", "}:forecast"
        found: set[str] = set()
        async for raw in self.client.scan_iter(match=f"{_glob_literal(head)}*{tail}", count=1000):
            key = raw.decode() if isinstance(raw, bytes) else raw
            if key.startswith(head) and key.endswith(tail):
                found.add(key[len(head) : -len(tail)])
                if len(found) >= MAX_SYMBOLS:
                    break
        return sorted(found)

    async def latest_forecast(self, symbol: str) -> dict[str, Any] | None:
        raw = await self.client.get(forecast_key(self.prefix, symbol))
        return None if raw is None else dict(json.loads(raw))

    async def bars(self, symbol: str, count: int) -> list[tuple[int, float]]:
        """The last ``count`` bars of ``symbol``'s ring: (epoch ns, close), oldest first."""
        key = bars_key(self.prefix, symbol)
        raws = await self.client.lrange(key, -count, -1)
        out = []
        for raw in raws:
            ts, values = decode_bar(raw, key)
            out.append((ts, values[CLOSE]))
        return out

    async def previous_fan(self, symbol: str, after_ns: int) -> Fan | None:
        """The oldest forecast still waiting for its horizon (the scorer's pending list) made at or after
        ``after_ns``: the one the newest bars are realising. None when scoring is off or none is pending."""
        from daemon.scoring.pending import PendingForecast
        from kronos_core.scoring import level_key

        raws = await self.client.lrange(f"{self.prefix}:scoring:pending:{symbol}", 0, -1)
        for raw in raws:
            p = PendingForecast.decode(raw)
            if p.as_of < after_ns:
                continue
            return Fan(
                as_of_ns=p.as_of,
                mean=[float(v) for v in p.mean],
                lo=[float(v) for v in p.quantiles[0]],
                hi=[float(v) for v in p.quantiles[-1]],
                lo_name=level_key(p.levels[0]),
                hi_name=level_key(p.levels[-1]),
                timestamps=[],
                model_version=p.version,
            )
        return None

    async def chart_data(
        self, symbol: str, count: int
    ) -> tuple[list[tuple[int, float]], Fan | None, Fan | None]:
        """The bars, the latest forecast's fan and a previous forecast's fan of one chart."""
        bars = await self.bars(symbol, count)
        forecast = await self.latest_forecast(symbol)
        try:
            fan = None if forecast is None else fan_from_forecast(forecast)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise StateError(
                f"the latest forecast of {symbol!r} in Redis is not in the daemon's format ({exc!r}); "
                "it is replaced by the next bar's"
            ) from exc
        previous = None
        if bars:
            previous = await self.previous_fan(symbol, bars[0][0])
            if previous is not None and fan is not None and previous.as_of_ns == fan.as_of_ns:
                previous = None  # the latest forecast itself: nothing realised yet
        return bars, fan, previous

    def events(self) -> dict[str, Any]:
        """Swaps (recent ones and counts by result) and dead letters (counts by kind) since start."""
        return {
            "swaps": {
                "recent": self.swaps.recent() if self.swaps is not None else [],
                "by_result": self._by_label(SWAP_RESULTS_METRIC, "result"),
            },
            "dead_letters": {
                "by_kind": {
                    k: self._sample("kronos_invalid_messages_total", {"kind": k}) for k in INVALID_KINDS
                },
                "truncated": self._sample("kronos_dead_letters_truncated_total", {}),
                "failed": self._sample("kronos_dead_letters_failed_total", {}),
            },
        }

    def _sample(self, name: str, labels: dict[str, str]) -> float:
        if self.registry is None:
            return 0.0
        return float(self.registry.get_sample_value(name, labels) or 0.0)

    def _by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.registry is None:
            return out
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and label in sample.labels:
                    out[sample.labels[label]] = float(sample.value)
        return out


def _glob_literal(text: str) -> str:
    from daemon.state.redis_access import glob_escape

    return glob_escape(text)


def recent_bars_json(symbol: str, bars: Sequence[tuple[int, float]]) -> dict[str, Any]:
    return {"symbol": symbol, "bars": [{"ts": ns_to_iso(ts), "close": c} for ts, c in bars]}
