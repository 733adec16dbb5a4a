"""The backtest and the daemon publish and score the same: one series through the real daemon (Kafka in,
Redis state and scores) and through ``kronos_core.evaluation.run_backtest`` with the same model, and the
same scores come out; the guarded distribution's state is in Redis, and a restarted daemon resumes it."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import redis.asyncio as aioredis

from daemon.scoring.calibration import publisher_config
from daemon.scoring.store_redis import RedisScoreStore
from kronos_core.evaluation import BacktestConfig, run_backtest
from kronos_core.evaluation.data import frame_to_bars
from kronos_core.stream_types import StreamForecaster
from tests.support.launcher import (
    Topics,
    bar_series,
    daemon_settings,
    forecasts,
    produce,
    read_topic,
    running_daemon,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(240)]

N = 90


def _bars(records: list[tuple[bytes | None, bytes | None]]) -> pd.DataFrame:
    rows = [json.loads(v or b"") for _, v in records]
    frame = pd.DataFrame(rows)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


async def _scores(store: RedisScoreStore, version: str, want: int) -> dict[str, object]:
    sums: dict[str, object] = {}
    for _ in range(100):  # the last round is scored right after its forecasts are published
        sums = await store.read([version, version + "@model"], 1, time.time())
        if version in sums and sums[version].forecasts == want:  # type: ignore[attr-defined]
            return sums
        await __import__("asyncio").sleep(0.1)
    raise AssertionError(f"scores of {want} forecasts never arrived: {sums}")


async def test_daemon_and_backtest_give_the_same_scores(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, forecaster: StreamForecaster
) -> None:
    records = bar_series("AGREE", N, seed=3)
    await produce(kafka_bootstrap, topics.input, records)
    settings = daemon_settings(
        kafka_bootstrap, redis_url, key_prefix, group_id, topics, scoring={"calibration_min": 20, "vol_window": 40}
    )
    h = settings.model.horizon
    async with running_daemon(settings, forecaster):
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, N))
        store = RedisScoreStore.from_settings(settings)
        try:
            daemon = await _scores(store, forecaster.model_version, N - h)
            state = await store.calibration([(forecaster.model_version, "AGREE")])
        finally:
            await store.close()
    assert all(f["bands"] == "guarded" for f in out)
    assert out[-1]["guard"]["scope"] == "symbol" and state[(forecaster.model_version, "AGREE")]["count"] == N - h

    cfg = BacktestConfig(
        horizon=h, origins=N, warmup=0, stride=1, min_history=1, batch=1, vol_window=40,
        context=forecaster.max_context - h, publisher=publisher_config(settings),
    )  # fmt: skip
    result = run_backtest(forecaster, frame_to_bars(_bars(records), "AGREE", "UTC", "ts"), cfg)
    assert result.summary["n_origins"] == N - h
    ours = result.summary["online_scorer"]
    theirs = {"published": daemon[forecaster.model_version].report().to_dict(),  # type: ignore[attr-defined]
              "model": daemon[forecaster.model_version + "@model"].report().to_dict()}  # type: ignore[attr-defined]  # fmt: skip
    for name in ("published", "model"):
        for key in ("count", "mae", "crps", "persistence_mae"):
            assert ours[name][key] == pytest.approx(theirs[name][key], rel=1e-5), (name, key)  # float32 model noise
    assert ours["published"]["coverage"] == theirs["published"]["coverage"]
    assert result.publisher is not None and result.publisher.count("AGREE") == N - h


async def test_a_restarted_daemon_resumes_the_calibration_from_redis(
    kafka_bootstrap: str, redis_url: str, key_prefix: str, group_id: str, topics: Topics, forecaster: StreamForecaster
) -> None:
    records = bar_series("RESUME", 60, seed=4)
    settings = daemon_settings(kafka_bootstrap, redis_url, key_prefix, group_id, topics, scoring={"calibration_min": 10})
    h = settings.model.horizon
    await produce(kafka_bootstrap, topics.input, records[:40])
    async with running_daemon(settings, forecaster):
        await read_topic(kafka_bootstrap, topics.output, 40)
        await _wait_count(redis_url, key_prefix, forecaster.model_version, "RESUME", 40 - h)
    await produce(kafka_bootstrap, topics.input, records[40:])
    async with running_daemon(settings, forecaster):
        out = forecasts(await read_topic(kafka_bootstrap, topics.output, 60))
        await _wait_count(redis_url, key_prefix, forecaster.model_version, "RESUME", 60 - h)
    # the first forecast after the restart already uses the symbol's own state, learnt before it
    assert out[40]["guard"]["scope"] == "symbol"
    assert np.all(np.asarray(out[40]["probabilities"]["p_up"]) >= 0)


async def _wait_count(redis_url: str, prefix: str, version: str, symbol: str, want: int) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(100):
            raw = await client.get(f"{prefix.rstrip(':')}:calibration:{version}:{symbol}")
            if raw and json.loads(raw)["count"] == want:
                return
            await __import__("asyncio").sleep(0.1)
        raise AssertionError(f"the stored calibration of {symbol} never counted {want} realised forecasts")
    finally:
        await client.aclose()
