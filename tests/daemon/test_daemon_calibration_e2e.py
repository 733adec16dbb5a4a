"""Per-symbol calibration through the real daemon (Kafka in, Redis state and calibration): twenty symbols
whose volatilities differ twentyfold, then a restart. The published p10-p90 band holds 70-90% of the
realised closes for nearly every symbol, and the first hundred forecasts after the restart keep it."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from daemon_helpers import (
    T0,
    Topics,
    bar_record,
    daemon_settings,
    encode,
    forecasts,
    produce,
    read_topic,
    running_daemon,
)

from kronos_core.stream_types import StreamForecaster

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(600)]

SYMBOLS = 20
BARS = 360
RESTART_AT = 300
SIGMAS = np.geomspace(0.001, 0.02, SYMBOLS)


def _closes(i: int) -> np.ndarray:
    rng = np.random.default_rng(100 + i)
    return np.round(50.0 * np.exp(np.cumsum(rng.normal(0, SIGMAS[i], BARS))), 6)


def _records(closes: dict[str, np.ndarray], lo: int, hi: int) -> list[tuple[bytes | None, bytes | None]]:
    return [
        encode(bar_record(s, T0 + timedelta(minutes=t), float(c[t])))
        for t in range(lo, hi)
        for s, c in closes.items()
    ]


def _hits(f: dict, closes: np.ndarray, t: int) -> list[bool]:
    lo, hi = f["quantiles"]["p10"]["close"], f["quantiles"]["p90"]["close"]
    return [lo[k] <= closes[t + 1 + k] <= hi[k] for k in range(len(lo)) if t + 1 + k < len(closes)]


async def test_per_symbol_coverage_and_after_a_restart(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, forecaster: StreamForecaster
) -> None:
    closes = {f"V{i:02d}": _closes(i) for i in range(SYMBOLS)}
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics)
    h = settings.model.horizon
    await produce(kafka_bootstrap, topics.input, _records(closes, 0, RESTART_AT))
    async with running_daemon(settings, forecaster):
        await read_topic(kafka_bootstrap, topics.output, SYMBOLS * RESTART_AT, timeout_s=400)
    await produce(kafka_bootstrap, topics.input, _records(closes, RESTART_AT, BARS))
    async with running_daemon(settings, forecaster):
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, SYMBOLS * BARS, timeout_s=200))
    assert all(f["bands"] == "guarded" for f in out)
    index = {t.isoformat().replace("+00:00", "Z"): n for n, t in enumerate(T0 + timedelta(minutes=m) for m in range(BARS))}
    by_symbol: dict[str, list[bool]] = {s: [] for s in closes}
    after_restart: list[tuple[int, list[bool]]] = []
    for f in out:
        t = index[f["as_of"]]
        hits = _hits(f, closes[f["symbol"]], t)
        if t >= 50 and t + h < BARS:  # once a symbol's own calibration has had its 50 realised forecasts
            by_symbol[f["symbol"]] += hits
        if t >= RESTART_AT and t + h < BARS:
            after_restart.append((t, hits))
    coverage = {s: float(np.mean(v)) for s, v in by_symbol.items()}
    within = [s for s, c in coverage.items() if 0.7 <= c <= 0.9]
    assert len(within) >= math.ceil(0.9 * SYMBOLS), " ".join(f"{s}={c:.3f}" for s, c in coverage.items())
    first = [hit for _, hits in sorted(after_restart, key=lambda x: x[0])[:100] for hit in hits]
    assert 0.7 <= float(np.mean(first)) <= 0.9, float(np.mean(first))
