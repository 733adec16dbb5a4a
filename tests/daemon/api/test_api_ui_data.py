"""The dashboard's reads from a real Redis, written by the daemon's own state store and scorer keys."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from daemon.api.ui.data import DashboardData, SwapLog
from daemon.errors import StateError
from daemon.io.messages import Bar
from daemon.ops.metrics import Metrics
from daemon.scoring.pending import PendingForecast
from daemon.state.base import StateUpdate
from daemon.state.memory import MemoryStateStore
from daemon.state.redis import RedisStateStore

pytestmark = [pytest.mark.redis]

NS = 60_000_000_000  # one minute
SYMBOLS = ("AAA", "B[1]*.SH", "C{x}")  # glob and hash-tag characters in names


@pytest.fixture
async def store(redis_url: str, key_prefix: str) -> AsyncIterator[RedisStateStore]:
    s = RedisStateStore.from_url(redis_url, key_prefix.rstrip(":"), 8)
    try:
        yield s
    finally:
        await s.close()


def _forecast(symbol: str, i: int) -> bytes:
    return json.dumps({"symbol": symbol, "as_of": f"2024-06-18T01:{30 + i:02d}:00Z", "n": i}).encode()


async def _write(store: RedisStateStore, symbol: str, n: int) -> list[tuple[int, float]]:
    bars = []
    for i in range(n):
        ts, close = (1_718_674_200 + 60 * i) * 10**9, 10.0 + i / 8
        await store.apply(
            [
                StateUpdate(
                    Bar(symbol, ts, (close,) * 4 + (1.0, close)), None, _forecast(symbol, i), "v1", f"t/0/{i}"
                )
            ]
        )
        bars.append((ts, close))
    return bars


async def test_symbols_bars_and_the_latest_forecast(store: RedisStateStore) -> None:
    written = {s: await _write(store, s, 11) for s in SYMBOLS}
    other = RedisStateStore(store._client, store.key_prefix + "x", 8)  # noqa: SLF001 - a neighbour prefix
    await _write(other, "ZZZ", 1)
    data = DashboardData.for_store(store)
    assert await data.symbols() == sorted(SYMBOLS)
    for s in SYMBOLS:
        assert await data.bars(s, 64) == written[s][-8:]  # the ring keeps max_context bars
        assert await data.bars(s, 3) == written[s][-3:]
        assert await data.latest_forecast(s) == json.loads(_forecast(s, 10))
    assert await data.bars("nope", 5) == [] and await data.latest_forecast("nope") is None


async def test_the_previous_forecast_is_the_oldest_pending_one_in_view(store: RedisStateStore) -> None:
    bars = await _write(store, "AAA", 8)
    data = DashboardData.for_store(store)
    levels = (0.1, 0.5, 0.9)

    def pending(as_of: int) -> bytes:
        q = np.array([[9.0, 9.1], [10.0, 10.1], [11.0, 11.1]])
        return PendingForecast("v1", as_of, 10.0, levels, np.array([10.0, 10.2]), q, q, None).encode()

    key = f"{store.key_prefix}:scoring:pending:AAA"
    await store._client.rpush(key, pending(bars[0][0] - NS), pending(bars[5][0]), pending(bars[6][0]))  # noqa: SLF001
    fan = await data.previous_fan("AAA", bars[2][0])
    assert fan is not None and fan.as_of_ns == bars[5][0]
    assert (fan.lo, fan.hi, fan.mean, fan.lo_name, fan.hi_name) == (
        [9.0, 9.1],
        [11.0, 11.1],
        [10.0, 10.2],
        "p10",
        "p90",
    )
    assert await data.previous_fan("AAA", bars[7][0]) is None
    assert await data.previous_fan("BBB", 0) is None


def test_events_come_from_the_daemons_registry() -> None:
    metrics = Metrics(CollectorRegistry())
    from daemon.model.swap import ModelMetrics

    swaps_metrics = ModelMetrics(metrics.registry)
    swaps_metrics.swaps.labels("ok").inc()
    swaps_metrics.swaps.labels("checksum").inc(2)
    metrics.invalid.labels("json").inc(3)
    metrics.dead_letters_failed.inc()
    log = SwapLog(size=2)
    for old, new in (("v1", "v2"), ("v2", "v3"), ("v3", "v4")):
        log.record(old, new)
    events = DashboardData(None, "p", metrics.registry, log).events()
    assert [(s["old_version"], s["new_version"]) for s in events["swaps"]["recent"]] == [
        ("v3", "v4"),
        ("v2", "v3"),
    ]
    assert events["swaps"]["by_result"]["ok"] == 1 and events["swaps"]["by_result"]["checksum"] == 2
    assert events["dead_letters"]["by_kind"]["json"] == 3 and events["dead_letters"]["by_kind"]["schema"] == 0
    assert (events["dead_letters"]["truncated"], events["dead_letters"]["failed"]) == (0, 1)


def test_a_store_not_in_redis_is_refused_with_a_reason() -> None:
    with pytest.raises(StateError, match="KRONOS_REDIS__URL"):
        DashboardData.for_store(MemoryStateStore())


async def test_a_malformed_stored_forecast_is_a_state_error_not_a_crash(store: RedisStateStore) -> None:
    await _write(store, "AAA", 2)  # its "forecasts" lack the quantiles
    with pytest.raises(StateError, match="not in the daemon's format"):
        await DashboardData.for_store(store).chart_data("AAA", 8)
